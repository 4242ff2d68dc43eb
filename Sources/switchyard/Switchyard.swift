import ArgumentParser

/// The `switchyard` executable: `serve` runs the balancer, the other commands help operate it.
@main
struct SwitchyardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "A shared HTTP/HTTPS load balancer for many tenants.",
        version: SwitchyardVersion.current,
        subcommands: [
            ServeCommand.self, DemoCommand.self, CheckConfigCommand.self, StatusCommand.self, TenantsCommand.self,
            DomainsCommand.self, BackendsCommand.self, CertsCommand.self, ApplyCommand.self, ChangesCommand.self,
            ReloadCommand.self, TopCommand.self, FleetCommand.self,
        ]
    )
}

enum SwitchyardVersion {
    static let current = "0.1.0"
}
