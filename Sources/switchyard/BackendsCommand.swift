import ArgumentParser
import Foundation
import NIOCore
import Switchyard

/// `switchyard backends drain|undrain NAME HOST:PORT`: take a backend out of rotation without cutting what it
/// serves, and put it back.
struct BackendsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backends",
        abstract: "Add, remove, weigh and drain a tenant's backends.",
        subcommands: [Add.self, Remove.self, Weight.self, Drain.self, Undrain.self]
    )

    /// The backend a command acts on.
    struct Target: ParsableArguments {
        @Argument(help: "The tenant's name.")
        var tenant: String

        @Argument(help: "The backend's HOST:PORT, as `switchyard status` shows it.")
        var backend: String

        var path: String {
            "/v1/tenants/\(AdminCall.segment(tenant))/backends/\(AdminCall.segment(backend))"
        }
    }

    struct Drain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send the backend no new requests or tunnels; those in progress finish.",
            discussion: """
                The drain lasts until `switchyard backends undrain`, across reloads and restarts (it is kept in \
                the state store). With --wait, the command returns once nothing is in progress on the backend (exit \
                status 1 if --timeout passes first).
                """
        )

        @OptionGroup var target: Target
        @OptionGroup var options: AdminOptions

        @Flag(help: "Wait until the backend has no requests or tunnels in progress.")
        var wait = false

        @Option(help: "With --wait, give up after this long (default 5m).")
        var timeout: String?

        @Option(help: "Only drain if the configuration is still at this version (`status` shows it).")
        var ifMatch: Int64?

        @OptionGroup var fleet: FleetWaitOptions

        func validate() throws {
            guard let timeout else { return }
            guard wait else { throw ValidationError("--timeout only applies with --wait") }
            guard case .success(let limit) = TimeAmount.parseConfigurationDuration(timeout), limit > .zero else {
                throw ValidationError("--timeout '\(timeout)' is not a duration such as 30s or 5m")
            }
        }

        func run() throws {
            let client = try options.client()
            var backend = try fleet.call { query in
                try client.post(target.path + "/drain" + query, ifMatch: ifMatch)
            }
            print("draining \(backend.address) of \(target.tenant): \(backend.connections) in progress on this node")
            guard wait else { return }
            let limit = timeout.flatMap { try? TimeAmount.parseConfigurationDuration($0).get() } ?? .minutes(5)
            let deadline = ContinuousClock.now + .nanoseconds(limit.nanoseconds)
            while backend.connections > 0 {
                guard ContinuousClock.now < deadline else {
                    AdminCall.printError(
                        "\(backend.connections) still in progress after \(timeout ?? "5m"); the backend stays draining"
                    )
                    throw ExitCode(1)
                }
                Thread.sleep(forTimeInterval: 0.25)
                do {
                    backend = try BackendsCommand.call(reporting: false) { try client.get(target.path) }
                } catch let failure as AdminClient.Failure where failure.status == 404 {
                    // A reload removed it (or its tenant): nothing can reach it any more.
                    print("\(target.backend) of \(target.tenant) is no longer in the configuration")
                    return
                }
            }
            print("drained: nothing in progress on \(backend.address)")
        }
    }

    struct Undrain: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send the backend new requests again.")

        @OptionGroup var target: Target
        @OptionGroup var options: AdminOptions

        @Option(help: "Only undrain if the configuration is still at this version (`status` shows it).")
        var ifMatch: Int64?

        @OptionGroup var fleet: FleetWaitOptions

        func run() throws {
            let client = try options.client()
            let backend = try fleet.call { query in
                try client.post(target.path + "/undrain" + query, ifMatch: ifMatch)
            }
            let health = backend.health == "up" ? "" : " (health: \(backend.health))"
            print("\(backend.address) of \(target.tenant): in rotation\(health)")
        }
    }

    /// `--wait-fleet` of a drain or undrain (whose `--wait` is drain's own: nothing in progress).
    struct FleetWaitOptions: ParsableArguments {
        @Flag(help: "Return once every live node of the fleet serves the change (at most --wait-timeout).")
        var waitFleet = false

        @Option(help: "How long --wait-fleet waits, in seconds (at most 60).")
        var waitTimeout: Double = 10

        /// ``BackendsCommand/call(reporting:_:)`` of `request`, given the query to append (empty without
        /// `--wait-fleet`); with it, fails unless every live node serves the change in time.
        func call(_ request: (String) throws -> Data) throws -> StatusReport.Backend {
            guard waitFleet else { return try BackendsCommand.call { try request("") } }
            var answer = Data()
            let backend = try BackendsCommand.call {
                answer = try request("?" + AdminCall.fleetWaitQuery(timeout: waitTimeout))
                return answer
            }
            let object = (try? JSONSerialization.jsonObject(with: answer)) as? [String: Any] ?? [:]
            AdminCall.reportFleet(object, waitTimeout: waitTimeout, quiet: false)
            return backend
        }
    }

    /// Calls the admin API and decodes the backend it answers with. Failures are printed and end the command
    /// with status 1, unless `reporting` is off: then the admin client's failure is rethrown for the caller.
    static func call(reporting: Bool = true, _ request: () throws -> Data) throws -> StatusReport.Backend {
        let body: Data
        do {
            body = try request()
        } catch {
            guard reporting else { throw error }
            AdminCall.printError("\(error)")
            throw ExitCode(1)
        }
        guard let backend = try? JSONDecoder().decode(StatusReport.Backend.self, from: body) else {
            AdminCall.printError(
                "the admin API's answer is not a backend's status: \(String(decoding: body, as: UTF8.self))"
            )
            throw ExitCode(1)
        }
        return backend
    }
}
