package com.example.shop.net

import okhttp3.CertificatePinner
import okhttp3.OkHttpClient

object Pinning {
    // Let's Encrypt roots for the API; Google Trust Services for everything under the shop.
    val certificatePinner = CertificatePinner.Builder()
        .add("api.shop.example.com", "sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M=")
        .add("api.shop.example.com", "sha256/diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI=")
        .add(
            "**.shop.example.com",
            "sha256/hxqRlPTu1bMS/0DITB1SSu0vd4u/8l8TjPgfaAp63Gc=",
            "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        )
        .add("*.cdn.example.net", "sha256/++MBgDH5WGvL9Bcn5Be30cRcL0f5O+NyoXuWtQdX1aI=")
        .add("*.cdn.example.net", "sha1/DmxUShsZuNiqPQsX2Oi9uv2sCnw=") // legacy clients
        // .add("old.example.com", "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .build()

    val client: OkHttpClient = OkHttpClient.Builder()
        .certificatePinner(certificatePinner)
        .build()
}
