// android_bridge/java's codec as a plain Java library (Java 17; D8 desugars records for Android).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

sourceSets {
    main {
        java.srcDir("../../java/src/main/java")
    }
}
