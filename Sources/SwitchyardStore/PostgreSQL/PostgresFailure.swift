import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import PostgresNIO

/// What can go wrong between the store and PostgreSQL, and how it reads to an operator.
enum PostgresFailure {
    /// An operation that got no answer within the store's timeout.
    struct TimedOut: Error, CustomStringConvertible {
        var timeout: TimeAmount
        var description: String { "no answer within \(timeout.nanoseconds / 1_000_000) ms" }
    }

    static let checkViolation = "23514"
    static let invalidText = "22P02"

    /// Waits for `future` from a thread that is not its event loop (the store's callers: the admin loop, the
    /// control plane's threads), at most `timeout`.
    ///
    /// Not `EventLoopFuture.wait()`, which refuses to run on any event loop thread, and the admin API answers on
    /// one of its own: blocking it is what the store's contract says (its SQLite twin blocks it on fsync), and the
    /// future completes on another loop, the connection's.
    static func wait<T: Sendable>(for future: EventLoopFuture<T>, timeout: TimeAmount) throws -> T {
        precondition(!future.eventLoop.inEventLoop, "a store operation waited on its own connection's event loop")
        let done = DispatchSemaphore(value: 0)
        let outcome = NIOLockedValueBox<Result<T, any Error>?>(nil)
        future.whenComplete { result in
            outcome.withLockedValue { $0 = result }
            done.signal()
        }
        guard done.wait(timeout: .now() + .nanoseconds(Int(timeout.nanoseconds))) == .success else {
            throw TimedOut(timeout: timeout)
        }
        guard let result = outcome.withLockedValue({ $0 }) else { throw TimedOut(timeout: timeout) }
        return try result.get()
    }

    /// Whether `error` came from the database or the connection to it (as opposed to a write's body).
    static func isDatabaseError(_ error: any Error) -> Bool {
        error is PSQLError || error is TimedOut || error is PostgresDecodingError || error is NIOSSLError
            || error is ChannelError || error is IOError
    }

    /// Whether the connection is no longer usable after `error`.
    static func brokeConnection(_ error: any Error) -> Bool {
        if error is TimedOut || error is ChannelError || error is IOError || error is NIOSSLError { return true }
        guard let error = error as? PSQLError else { return false }
        return error.code != .server
    }

    /// The TLS failure behind `error`, if it is one (the handshake failed, the certificate's names do not cover
    /// the host).
    static func tlsFailure(_ error: any Error) -> (any Error)? {
        if error is NIOSSLError || error is NIOSSLExtraError { return error }
        if let error = error as? PSQLError, let underlying = error.underlying { return tlsFailure(underlying) }
        return nil
    }

    /// What went wrong, in a few words and the server's own, without the query (which may hold a private key).
    static func describe(_ error: any Error) -> String {
        if let failure = tlsFailure(error) {
            // BoringSSL's text names a source file of the build: only the verdict is kept.
            if "\(failure)".contains("CERTIFICATE_VERIFY_FAILED") {
                return "the TLS handshake failed: the server's certificate could not be verified"
            }
            return "the TLS handshake failed (\(failure))"
        }
        switch error {
        case let error as PSQLError:
            if let message = error.serverInfo?[.message] {
                let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
                return message + state
            }
            if let underlying = error.underlying {
                return "\(error.code): \(describe(underlying))"
            }
            return "\(error.code)"
        case let error as IOError:
            return error.description
        default:
            return "\(error)"
        }
    }

    /// The remedy for a failure, for an operator: what to check.
    static func remedy(_ error: any Error) -> String {
        if tlsFailure(error) != nil {
            return "with sslmode=verify-full, name the CA that signed the server's certificate in `sslrootcert`, and "
                + "check that the certificate names the host in `state`"
        }
        if error is TimedOut {
            return "check that PostgreSQL is running and reachable, and not overloaded"
        }
        guard let error = error as? PSQLError else {
            return "check that PostgreSQL is running and reachable at that address"
        }
        switch error.serverInfo?[.sqlState] {
        case "28P01", "28000":
            return "check the user, and the password in PGPASSWORD or `state_password_file`"
        case "3D000":
            return "create the database, or name an existing one in `state`"
        case "42501":
            return "grant the user the right to create schema switchyard and its tables, or create them as an owner"
        case .some:
            return "see PostgreSQL's log"
        case nil:
            switch error.code {
            case .sslUnsupported:
                return "the server does not offer TLS: enable it there, or set sslmode=disable in `state`"
            case .authMechanismRequiresPassword:
                return "the server asks for a password: set PGPASSWORD or `state_password_file`"
            default:
                return "check that PostgreSQL is running and reachable at that address"
            }
        }
    }
}

extension StoreError {
    /// Any error met while using a PostgreSQL store, as a ``StoreError``: store errors as they are, the database's
    /// as ``unavailable(path:reason:)`` naming what happened and what to check.
    static func wrappingPostgres(_ error: any Error, location: String) -> StoreError {
        if let error = error as? StoreError {
            return error
        }
        return .unavailable(
            path: location,
            reason: "\(PostgresFailure.describe(error)); \(PostgresFailure.remedy(error))"
        )
    }
}
