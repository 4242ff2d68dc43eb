import ArgumentParser
import Foundation
import NIOCore
import Switchyard

/// `switchyard backends drain|undrain NAME HOST:PORT`: take a backend out of rotation without cutting what it
/// serves, and put it back.
struct BackendsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backends",
        abstract: "Drain a tenant's backend, or end its drain.",
        subcommands: [Drain.self, Undrain.self]
    )

    /// The backend a command acts on.
    struct Target: ParsableArguments {
        @Argument(help: "The tenant's name.")
        var tenant: String

        @Argument(help: "The backend's HOST:PORT, as `switchyard status` shows it.")
        var backend: String

        var path: String {
            let allowed = CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))
            let tenant = self.tenant.addingPercentEncoding(withAllowedCharacters: allowed) ?? self.tenant
            let backend = self.backend.addingPercentEncoding(withAllowedCharacters: allowed) ?? self.backend
            return "/tenants/\(tenant)/backends/\(backend)"
        }
    }

    struct Drain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send the backend no new requests or tunnels; those in progress finish.",
            discussion: """
                The drain lasts until `switchyard backends undrain`, across reloads, but not across a restart of \
                the balancer.
                """
        )

        @OptionGroup var target: Target
        @OptionGroup var options: AdminOptions

        @Flag(help: "Wait until the backend has no requests or tunnels in progress.")
        var wait = false

        @Option(help: "With --wait, give up after this long (e.g. 30s, 5m).")
        var timeout: String = "5m"

        func run() throws {
            guard case .success(let limit) = TimeAmount.parseConfigurationDuration(timeout) else {
                throw ValidationError("--timeout '\(timeout)' is not a duration such as 30s or 5m")
            }
            let client = AdminClient(path: options.socketPath)
            var backend = try BackendsCommand.call { try client.post(target.path + "/drain") }
            print("draining \(backend.address) of \(target.tenant): \(backend.connections) in progress")
            guard wait else { return }
            let deadline = ContinuousClock.now + .nanoseconds(limit.nanoseconds)
            while backend.connections > 0 {
                guard ContinuousClock.now < deadline else {
                    BackendsCommand.fail(
                        "\(backend.connections) still in progress after \(timeout); the backend stays draining"
                    )
                }
                Thread.sleep(forTimeInterval: 0.25)
                backend = try BackendsCommand.call { try client.get(target.path) }
            }
            print("drained: nothing in progress on \(backend.address)")
        }
    }

    struct Undrain: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send the backend new requests again.")

        @OptionGroup var target: Target
        @OptionGroup var options: AdminOptions

        func run() throws {
            let client = AdminClient(path: options.socketPath)
            let backend = try BackendsCommand.call { try client.post(target.path + "/undrain") }
            print("\(backend.address) of \(target.tenant): \(backend.state)")
        }
    }

    /// Calls the admin API and decodes the backend it answers with; errors end the command with status 1.
    static func call(_ request: () throws -> Data) throws -> StatusReport.Backend {
        do {
            return try JSONDecoder().decode(StatusReport.Backend.self, from: request())
        } catch {
            fail("\(error)")
        }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("switchyard: \(message)\n".utf8))
        Foundation.exit(1)
    }
}
