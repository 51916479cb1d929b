// swift-tools-version:6.0
// Winnow: sequential recommenders trained on noisy implicit feedback, served over ZeroMQ.
// Libraries live under Shared/ and know nothing of processes; every process under Services/
// only wires libraries to sockets. See docs/DECISIONS.md for decisions.
import PackageDescription

let releaseSpeed: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
/// Numerics' kernels are SIMD8 code (exp8, the GRU gates, softmax), which at -Onone runs some 100×
/// slower than scalar code (every vector op spills to the stack): debug builds optimise these
/// modules (Numerics, Kernels, KernelsAVX2) so that debug test runs that train models stay quick.
/// Other modules stay -Onone.
let numericsSpeed: [SwiftSetting] = releaseSpeed + [.unsafeFlags(["-O"], .when(configuration: .debug))]
/// KernelsAVX2 compiles Kernels' element-wise source for AVX2 (`x86-64-v3`, which Swift 6.3
/// spells `haswell`); Numerics calls it only on CPUs that have it (Kernels' KernelChoice).
#if arch(x86_64)
let avx2Speed: [SwiftSetting] = numericsSpeed + [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let avx2Speed: [SwiftSetting] = numericsSpeed
#endif

let package = Package(
    name: "Winnow",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "winnow", targets: ["winnow"]),
        .executable(name: "broker", targets: ["broker"]),
        .executable(name: "featurestore", targets: ["featurestore"]),
        .executable(name: "teacher", targets: ["teacher"]),
        .executable(name: "noise", targets: ["noise"]),
        .executable(name: "trainer", targets: ["trainer"]),
        .executable(name: "retrieval", targets: ["retrieval"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
    ],
    targets: [
        // C libraries, through pkg-config (installed by scripts/bootstrap).
        .systemLibrary(name: "CZeroMQ", path: "Shared/CZeroMQ", pkgConfig: "libzmq",
                       providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CBLAS", path: "Shared/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPostgres", path: "Shared/CPostgres", pkgConfig: "libpq",
                       providers: [.apt(["libpq-dev"])]),

        // hnswlib (Debian's libhnswlib-dev, header-only C++) behind a C face: retrieval's
        // approximate index for large catalogues.
        .target(name: "CHNSW", path: "Shared/CHNSW", cxxSettings: [.unsafeFlags(["-std=c++17", "-O3"])]),

        // Wire: sockets, contracts, RPC, broker, the service runtime.
        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"], path: "Shared/ZeroMQ"),
        .target(name: "WinnowProto",
                dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
                path: "Shared/WinnowProto"),
        .target(name: "RPC",
                dependencies: ["ZeroMQ", "WinnowProto",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Shared/RPC"),
        .target(name: "BrokerKit",
                dependencies: ["RPC", "ZeroMQ", "WinnowProto", .product(name: "Logging", package: "swift-log")],
                path: "Shared/BrokerKit"),
        .target(name: "ServiceKit",
                dependencies: ["RPC", "ZeroMQ", "WinnowProto", .product(name: "Logging", package: "swift-log")],
                path: "Shared/ServiceKit"),

        // Storage and the local stack.
        .target(name: "Postgres", dependencies: ["CPostgres", .product(name: "Logging", package: "swift-log")],
                path: "Shared/Postgres"),
        .target(name: "Store",
                dependencies: ["Postgres", "Data", "WinnowProto", "RPC",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Shared/Store"),
        .target(name: "Stack",
                dependencies: ["RPC", "Postgres", "WinnowProto", .product(name: "Logging", package: "swift-log")],
                path: "Shared/Stack"),

        // Numerics, data, models, evaluation, training.
        // Element-wise kernels, one source compiled twice: baseline x86-64 and AVX2, chosen at run time.
        .target(name: "Kernels", dependencies: [], path: "Shared/Kernels", swiftSettings: numericsSpeed),
        .target(name: "KernelsAVX2", dependencies: [], path: "Shared/KernelsAVX2", swiftSettings: avx2Speed),
        .target(name: "Numerics", dependencies: ["CBLAS", "Kernels", "KernelsAVX2"], path: "Shared/Numerics",
                swiftSettings: numericsSpeed),
        .target(name: "Data", dependencies: [], path: "Shared/Data"),
        .target(name: "Evaluation", dependencies: ["Numerics", "Data"], path: "Shared/Evaluation",
                swiftSettings: releaseSpeed),
        .target(name: "Models", dependencies: ["Numerics"], path: "Shared/Models", swiftSettings: releaseSpeed),
        .target(name: "Training", dependencies: ["Numerics", "Data", "Evaluation", "Models"],
                path: "Shared/Training", swiftSettings: releaseSpeed),

        // The five training methods, composable on any backbone (WSLRec, CSRec, UFNRec, DSS, ATJT).
        .target(name: "Methods", dependencies: ["Numerics", "Models", "Data", "Evaluation", "Training"],
                path: "Shared/Methods", swiftSettings: releaseSpeed),

        // Jobs: the job file, the method names and refused compositions, the job runner, the
        // experiment drivers (grids, robustness) — what composes the methods into a run.
        .target(name: "Jobs", dependencies: ["Methods", "Numerics", "Models", "Data", "Evaluation", "Training"],
                path: "Shared/Jobs", swiftSettings: releaseSpeed),

        // Remote: the only module that imports both Methods and RPC — remote soft-label sources
        // and weighers, proto <-> domain forms.
        .target(name: "Remote",
                dependencies: ["Jobs", "Methods", "Training", "Models", "Data", "Numerics", "Store", "RPC", "WinnowProto",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                path: "Shared/Remote"),

        // Each service's handlers and state; they check every request.
        .target(name: "TeacherKit",
                dependencies: ["Remote", "Jobs", "Methods", "Training", "Models", "Data", "Numerics", "Store", "RPC", "WinnowProto",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Shared/TeacherKit"),
        .target(name: "NoiseKit",
                dependencies: ["Remote", "Jobs", "Methods", "Training", "Models", "Data", "Numerics", "Store", "RPC", "WinnowProto",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Shared/NoiseKit"),
        .target(name: "TrainerKit",
                dependencies: ["Remote", "Jobs", "Methods", "Training", "Models", "Data", "Numerics", "Store", "RPC", "WinnowProto",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Shared/TrainerKit"),

        .target(name: "RetrievalKit",
                dependencies: ["Models", "Numerics", "Store", "RPC", "WinnowProto", "CHNSW",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Shared/RetrievalKit"),

        // Processes.
        .executableTarget(name: "broker", dependencies: ["BrokerKit", "ServiceKit"], path: "Services/Broker"),
        .executableTarget(name: "featurestore", dependencies: ["ServiceKit", "Postgres", "Store"], path: "Services/FeatureStore"),
        .executableTarget(name: "teacher", dependencies: ["ServiceKit", "TeacherKit", "Store", "RPC", "Numerics"], path: "Services/Teacher"),
        .executableTarget(name: "noise", dependencies: ["ServiceKit", "NoiseKit", "Store", "RPC", "Numerics"], path: "Services/Noise"),
        .executableTarget(name: "trainer", dependencies: ["ServiceKit", "TrainerKit", "Store", "RPC", "Numerics"], path: "Services/Trainer"),
        .executableTarget(name: "retrieval", dependencies: ["ServiceKit", "RetrievalKit", "Store", "RPC"], path: "Services/Retrieval"),
        .executableTarget(name: "winnow",
                          dependencies: ["RPC", "ServiceKit", "Stack", "Training", "Data", "Evaluation", "Store", "Postgres",
                                         "Methods", "Jobs", "Numerics", "Models", "RetrievalKit", "Remote",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                          path: "Services/Winnow"),

        // Tests mirror the libraries; integration tests start real processes and a real Postgres.
        // Helpers shared by test targets (buffers for gradient checks, a seeded generator).
        .target(name: "WinnowTestSupport", dependencies: ["Numerics", "Data"], path: "Tests/TestSupport"),
        .testTarget(name: "RPCTests", dependencies: ["RPC", "ZeroMQ", "WinnowProto", "WinnowTestSupport"],
                    path: "Tests/RPCTests"),
        .testTarget(name: "BrokerKitTests", dependencies: ["BrokerKit", "RPC", "WinnowTestSupport"],
                    path: "Tests/BrokerKitTests"),
        .testTarget(name: "ServiceKitTests", dependencies: ["ServiceKit", "RPC", "WinnowProto", "Postgres"],
                    path: "Tests/ServiceKitTests"),
        .testTarget(name: "StackTests", dependencies: ["Stack", "Postgres", "RPC"], path: "Tests/StackTests"),
        // An embedded Postgres and a fresh database per test, for the targets that need the store.
        .target(name: "StoreTestSupport",
                dependencies: ["Store", "Postgres", "WinnowProto", "BrokerKit", "ServiceKit", "RPC", "Data", "Numerics",
                               .product(name: "SwiftProtobuf", package: "swift-protobuf")], path: "Tests/StoreTestSupport"),
        .testTarget(name: "TrainerKitTests",
                    dependencies: ["TrainerKit", "StoreTestSupport", "Store", "Methods", "Jobs", "Training", "Models", "Data", "Numerics",
                                   "RPC", "WinnowProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                    path: "Tests/TrainerKitTests"),
        .testTarget(name: "TeacherKitTests",
                    dependencies: ["TeacherKit", "Remote", "StoreTestSupport", "Store", "Methods", "Jobs", "Training", "Models", "Data",
                                   "Numerics", "RPC", "BrokerKit", "WinnowProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                    path: "Tests/TeacherKitTests"),
        .testTarget(name: "NoiseKitTests",
                    dependencies: ["NoiseKit", "Remote", "StoreTestSupport", "Store", "Methods", "Jobs", "Training", "Models", "Data",
                                   "Numerics", "RPC", "BrokerKit", "WinnowProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                    path: "Tests/NoiseKitTests"),
        .testTarget(name: "RetrievalKitTests",
                    dependencies: ["RetrievalKit", "TrainerKit", "StoreTestSupport", "Store", "Methods", "Jobs", "Training", "Models", "Data",
                                   "Evaluation", "Numerics", "RPC", "WinnowProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                    path: "Tests/RetrievalKitTests"),
        .testTarget(name: "StoreTests",
                    dependencies: ["Store", "StoreTestSupport", "Postgres", "Data", "RPC", "WinnowProto", "ServiceKit", "BrokerKit",
                                   .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                    path: "Tests/StoreTests"),
        .testTarget(name: "NumericsTests", dependencies: ["Numerics", "Kernels", "KernelsAVX2", "WinnowTestSupport"], path: "Tests/NumericsTests"),
        .testTarget(name: "DataTests", dependencies: ["Data"], path: "Tests/DataTests"),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "Numerics", "Data"],
                    path: "Tests/EvaluationTests"),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Numerics", "WinnowTestSupport"], path: "Tests/ModelsTests"),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Models", "Data", "Evaluation", "Numerics"],
                    path: "Tests/TrainingTests"),
        .testTarget(name: "MethodsTests", dependencies: ["Methods", "Jobs", "Training", "Models", "Data", "Evaluation", "Numerics"],
                    path: "Tests/MethodsTests"),
    ],
    swiftLanguageModes: [.v5]
)
