// The edgedfl Android app: one foreground service that joins a swarm as a phone.
// Build: see README.md (needs the Android SDK; nothing here was built on the dev machines).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "edgedfl-android"
include(":app")
// The reference wire codec (android_bridge/java), compiled from its own sources: one codec, tested
// byte for byte against the Python golden files there, is what the app speaks.
include(":wire")
