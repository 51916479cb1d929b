// The featurestore process: opens the feature store on --database-url (migrating the schema)
// and serves its rpcs through ServiceKit.
import Foundation
import ServiceKit
import Store

exit(ServiceRuntime.main(kind: "featurestore") { runtime in
    guard let url = runtime.options.databaseURL, !url.isEmpty else {
        throw StoreError.failedPrecondition("featurestore needs --database-url (or WINNOW_DATABASE_URL); `winnow up` passes one")
    }
    let store = try FeatureStore(url: url, poolSize: max(runtime.options.workers, 2) + 2, logger: runtime.logger)
    FeatureStoreService(store: store).register(on: runtime.server)
    runtime.healthDetail = { ["schema": "\(Schema.latestVersion)"] }
})
