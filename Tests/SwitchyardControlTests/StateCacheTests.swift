import Foundation
import SwitchyardStore
import Testing

@testable import Switchyard
@testable import SwitchyardControl

/// A node's copy of a shared store: written whole and 0600, read back only for the store it is a copy of.
@Suite("State cache")
struct StateCacheTests {
    @Test("what is saved is loaded for its store only; another store's copy and a damaged file are ignored")
    func roundTrip() throws {
        let directory = NSTemporaryDirectory() + "switchyard-cache-test-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = StateCache(path: directory + "/nested/cache.json")
        var state = ControlState(file: try ControlPlaneTests.file())
        let document = #"{"backends":["127.0.0.1:9002"],"domains":["shop.test"],"name":"shop"}"#
        state.tenants["shop"] = try ManagedTenant(document: document, source: "test")
        state.drains = [StoredDrain(tenant: "shop", backend: "127.0.0.1:9002")]
        let store = "postgres://lb@db:5432/fleet"
        try cache.save(state, revision: 7, store: store)

        var mode = stat()
        #expect(stat(cache.path, &mode) == 0 && mode.st_mode & 0o777 == 0o600)
        let loaded = try #require(cache.load(for: store))
        #expect(loaded.revision == 7)
        #expect(loaded.snapshot.tenants == ["shop": state.tenants["shop"]?.document ?? ""])
        #expect(loaded.snapshot.drains == state.drains)
        #expect(Date().timeIntervalSince(loaded.savedAt) < 60)
        #expect(cache.load(for: "postgres://lb@db:5432/other") == nil)

        try "{ not json".write(toFile: cache.path, atomically: true, encoding: .utf8)
        #expect(cache.load(for: store) == nil)
    }
}
