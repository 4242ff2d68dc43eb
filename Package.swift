// swift-tools-version:6.1
import PackageDescription

// The release build of the data path's modules runs without dynamic exclusivity checks (a runtime call on every
// access to a class's stored property: 50 per proxied request, measured with perf). The debug build the tests run
// keeps them, so a violation is still caught there.
let releaseDataPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "switchyard",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "switchyard", targets: ["switchyard"]),
        .library(name: "Switchyard", targets: ["Switchyard"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        .target(
            name: "COpenSSL",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .target(name: "CMemory"),
        // epoll, eventfd and TCP options for the data path's own event loop (``SocketLoop``).
        .target(name: "CSocketLoop"),
        .target(
            name: "SwitchyardTLS",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: releaseDataPath
        ),
        .target(
            name: "Switchyard",
            dependencies: [
                "SwitchyardTLS",
                "CMemory",
                "CSocketLoop",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: releaseDataPath
        ),
        // The durable state store: SQLite through GRDB, or PostgreSQL through PostgresNIO (whose TLS is NIOSSL's, to
        // the database only). The data path (`Switchyard`) must never depend on it.
        .target(
            name: "SwitchyardStore",
            dependencies: [
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The control plane: builds routing snapshots from the file and the store, answers the admin API's
        // tenant endpoints. Depends on both; neither depends on it.
        .target(
            name: "SwitchyardControl",
            dependencies: [
                "Switchyard",
                "SwitchyardStore",
                "SwitchyardTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "Switchyard",
                "SwitchyardControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // What the test targets share: running real programs (curl, openssl, Python, the binary) as children.
        .target(
            name: "SwitchyardTestSupport",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio")
            ],
            path: "Tests/SwitchyardTestSupport"
        ),
        .testTarget(
            name: "SwitchyardTests",
            dependencies: [
                "Switchyard",
                "SwitchyardTestSupport",
                "SwitchyardTLS",
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchyardStoreTests",
            dependencies: [
                "SwitchyardStore",
                "SwitchyardTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .testTarget(
            name: "SwitchyardControlTests",
            dependencies: [
                "SwitchyardControl",
                "Switchyard",
                "SwitchyardStore",
                "SwitchyardTestSupport",
                "SwitchyardTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "SwitchyardIntegrationTests",
            dependencies: [
                "Switchyard",
                "SwitchyardTestSupport",
                // Listed so that `swift test` builds the binary the tests run.
                "switchyard",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)

// The libFuzzer harnesses (`Scripts/fuzz`; README "Fuzzing"): with SWITCHYARD_FUZZ=1, the proxy's module is built
// with coverage for libFuzzer and with AddressSanitizer, and an executable of the harnesses is added (libFuzzer
// provides its `main`). Without it neither exists, so an ordinary build and the tests are untouched. Only
// `Switchyard` is instrumented: its dependencies are built as always.
if Context.environment["SWITCHYARD_FUZZ"] == "1" {
    let fuzzing: [SwiftSetting] = [.unsafeFlags(["-sanitize=fuzzer,address"])]
    for target in package.targets where target.name == "Switchyard" {
        target.swiftSettings = (target.swiftSettings ?? []) + fuzzing
    }
    package.targets.append(
        .executableTarget(
            name: "SwitchyardFuzz",
            dependencies: [
                "Switchyard",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Fuzz/Sources/SwitchyardFuzz",
            swiftSettings: [.unsafeFlags(["-sanitize=fuzzer,address", "-parse-as-library"])],
            linkerSettings: [.unsafeFlags(["-sanitize=fuzzer,address"])]
        )
    )
}
