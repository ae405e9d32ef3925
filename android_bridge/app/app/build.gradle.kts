plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.edgedfl.app"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.edgedfl.app"
        // 28: java.util.Base64, ForegroundService. Messages are signed (Ed25519) unless the swarm is "open": the
        // platform has Ed25519 from API 33; on 28..32 register a provider (e.g. BouncyCastle) or run the swarm open
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            // the ExecuTorch AAR ships these two ABIs
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }

    packaging {
        jniLibs {
            useLegacyPackaging = true
        }
    }
}

val executorchVersion: String by project
val executorchAar: String? = findProperty("executorchAar") as String?

dependencies {
    implementation(project(":wire"))
    if (executorchAar != null) {
        implementation(files(executorchAar))
        // what the Maven artifact would have pulled in
        implementation("com.facebook.soloader:soloader:0.10.5")
        implementation("com.facebook.fbjni:fbjni:0.5.1")
    } else {
        implementation("org.pytorch:executorch-android:$executorchVersion")
    }
    // MQTT 3.1.1 client; the plain Java client, not the unmaintained Paho Android service
    implementation("org.eclipse.paho:org.eclipse.paho.client.mqttv3:1.2.5")
    implementation("androidx.core:core-ktx:1.13.1")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")

    testImplementation("junit:junit:4.13.2")
}
