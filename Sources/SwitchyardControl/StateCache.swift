import Foundation
import SwitchyardStore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// This node's copy of what a shared store (PostgreSQL) held when it last read it: what a node started while the
/// database is down serves, until the database answers and it catches up.
///
/// One JSON file, written whole to a temporary file and renamed over the last (so a crash leaves the old copy or
/// the new one), mode 0600: it holds the uploaded certificates' private keys, as the store does. It names the
/// store it is a copy of, so a node pointed at another database never serves this one's tenants.
struct StateCache {
    /// The file.
    let path: String

    /// What the file holds.
    struct Contents: Codable {
        /// ``StateLocation``'s description of the store it is a copy of (never with a password).
        var store: String
        var revision: Int64
        var savedAt: Date
        var tenants: [String: String]
        var drains: [StoredDrain]
        var certificates: [Certificate]

        struct Certificate: Codable {
            var tenant: String
            var chainPEM: String
            var keyPEM: String
            var fingerprint: String
            var names: [String]
            var notAfter: Date
        }

        var snapshot: StoreSnapshot {
            StoreSnapshot(
                revision: revision,
                tenants: tenants,
                drains: Set(drains),
                certificates: Dictionary(
                    certificates.map { certificate in
                        (
                            certificate.tenant,
                            StoredCertificate(
                                tenant: certificate.tenant,
                                chainPEM: certificate.chainPEM,
                                keyPEM: certificate.keyPEM,
                                fingerprint: certificate.fingerprint,
                                names: certificate.names,
                                notAfter: certificate.notAfter
                            )
                        )
                    },
                    uniquingKeysWith: { first, _ in first }
                )
            )
        }
    }

    /// The cache of `store` at `path`, or `nil` when there is none, it is of another store, or it does not read
    /// (a damaged cache is only a cache: it is ignored, and written again at the next chance).
    func load(for store: String) -> Contents? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        guard let contents = try? decoder.decode(Contents.self, from: data), contents.store == store else {
            return nil
        }
        return contents
    }

    /// Writes `state` at `revision` as the copy of `store`.
    func save(_ state: ControlState, revision: Int64, store: String) throws {
        let contents = Contents(
            store: store,
            revision: revision,
            savedAt: Date(),
            tenants: state.tenants.mapValues(\.document),
            drains: state.drains.sorted(),
            certificates: state.certificates.values.sorted { $0.tenant < $1.tenant }.map { certificate in
                Contents.Certificate(
                    tenant: certificate.tenant,
                    chainPEM: certificate.chainPEM,
                    keyPEM: certificate.keyPEM,
                    fingerprint: certificate.fingerprint,
                    names: certificate.names,
                    notAfter: certificate.notAfter
                )
            }
        )
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .millisecondsSince1970
        let data = try encoder.encode(contents)
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(
                atPath: directory,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700]
            )
        }
        // Of this process: nodes of one fleet on one host may share the file.
        let temporary = path + ".\(getpid()).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode_t(0o600))
        guard descriptor >= 0 else { throw CacheError(path: temporary, errno: errno) }
        defer { close(descriptor) }
        try data.withUnsafeBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            var offset = 0
            while offset < bytes.count {
                let written = write(descriptor, base + offset, bytes.count - offset)
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { throw CacheError(path: temporary, errno: errno) }
                offset += written
            }
        }
        guard fsync(descriptor) == 0, rename(temporary, path) == 0 else { throw CacheError(path: path, errno: errno) }
    }

    struct CacheError: Error, CustomStringConvertible {
        var path: String
        var errno: Int32
        var description: String { "\(path): \(String(cString: strerror(errno)))" }
    }
}
