#!/usr/bin/env bash
# Builds the Java reference codec of the wire format and runs its JUnit tests, with nothing but
# Debian's JDK (javac, jar) and junit5 packages: no Gradle, no Maven, no downloads.
#
#   android_bridge/java/build.sh              compile, jar, run the JUnit tests
#   android_bridge/java/build.sh --no-tests   compile and jar only
#
# Outputs (gitignored) under android_bridge/java/build/:
#   edgedfl-wire.jar            the codec an Android app links (no dependencies)
#   reports/TEST-junit-jupiter.xml   the JUnit report
# Exit status: 0 ok, 1 tests failed, 3 a tool is missing (javac / the JUnit console launcher).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${EDGEDFL_JAVA_BUILD:-$HERE/build}
JUNIT_JAR=${JUNIT_CONSOLE_JAR:-/usr/share/java/junit-platform-console-standalone.jar}

for tool in javac java jar; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install default-jdk-headless)" >&2; exit 3; }
done

rm -rf "$BUILD/classes" "$BUILD/test-classes" "$BUILD/reports"
mkdir -p "$BUILD"
# --release 17: the API level an Android app with desugaring targets; -Werror keeps it lint-clean.
javac --release 17 -encoding UTF-8 -Xlint:all -Werror -d "$BUILD/classes" \
    $(find "$HERE/src/main/java" -name '*.java' | sort)
jar --create --file "$BUILD/edgedfl-wire.jar" --main-class org.edgedfl.wire.WireTool -C "$BUILD/classes" .
echo "built $BUILD/edgedfl-wire.jar"

[ "${1:-}" = "--no-tests" ] && exit 0

if [ ! -f "$JUNIT_JAR" ]; then
    echo "build.sh: JUnit console launcher $JUNIT_JAR not found (apt-get install junit5)" >&2
    exit 3
fi
javac --release 17 -encoding UTF-8 -Xlint:all -Werror -cp "$BUILD/classes:$JUNIT_JAR" -d "$BUILD/test-classes" \
    $(find "$HERE/src/test/java" -name '*.java' | sort)
# Small heap and one compiler thread: the machines running this are small and shared.
set +e
java -Xmx256m -XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 \
    -Dedgedfl.golden="$ROOT/tests/wire/golden" \
    -Dedgedfl.expectations="$HERE/src/test/resources/golden_expectations.json" \
    -jar "$JUNIT_JAR" --disable-banner --disable-ansi-colors --details=tree \
    --class-path "$BUILD/classes:$BUILD/test-classes" --scan-class-path "$BUILD/test-classes" \
    --reports-dir "$BUILD/reports" --fail-if-no-tests
status=$?
set -e
[ "$status" -eq 0 ] || exit 1
