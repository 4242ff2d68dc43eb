import NIOCore
import SwitchyardTLS

/// The balancer's whole configuration, as read from `switchyard.yaml`.
///
/// A value of this type has been validated: every address parses, every tenant has at least one domain and one
/// backend, no domain belongs to two tenants. The running server holds one immutable value and a reload swaps it
/// for a new one, so nothing here is ever mutated while traffic flows.
public struct Configuration: Sendable, Equatable {
    /// The data path's transport (`io`).
    public enum IO: String, Sendable, Equatable, CaseIterable {
        /// SwiftNIO's event loops and channels.
        case nio
        /// The balancer's own per-core epoll loops (``SocketLoop``): each socket registered once, edge-triggered,
        /// read and written directly.
        case epoll
    }

    /// Addresses to accept plain HTTP and HTTPS on.
    public var listen: Listen
    /// Event-loop threads; `nil` means one per core (`workers: auto`).
    public var workers: Int?
    /// `io`: which event loop carries client connections and their backend connections.
    public var io: IO = .epoll
    /// Where the admin API listens.
    public var admin: Admin
    /// The durable store for changes made through the admin API: an SQLite file's path, or a PostgreSQL URL
    /// (``StateLocation``).
    public var statePath: String
    /// The file holding the PostgreSQL store's password (`PGPASSWORD` otherwise).
    public var statePasswordFile: String?
    /// Where a node keeps its copy of a PostgreSQL store's state, served when it starts while the database is down
    /// (`state_cache`).
    public var stateCachePath = "run/state-cache.json"
    /// How much of the state store's change log is kept (`change_log:`).
    public var changeLog = ChangeLog()
    /// The default certificate, used when SNI names no tenant certificate.
    public var tls: TLSFiles?
    /// Protocol versions, ciphers, groups, session cache and tickets of every TLS context (`tls:` keys).
    public var tlsPolicy: TLSPolicy = TLSPolicy()
    /// Tenants declared in the file.
    public var tenants: [TenantConfiguration]
    /// Timeouts; every one has a safe default.
    public var timeouts: Timeouts
    /// Size and count limits; every one has a safe default.
    public var limits: Limits
    /// Whether one line per request is logged.
    public var accessLog: Bool
    /// `access_log.format`: `text` or `json`.
    public var accessLogFormat: AccessLogFormat = .text
    /// `access_log.path`: a file the lines are appended to (reopened on SIGUSR1); `nil` for standard output.
    public var accessLogPath: String?
    /// `request_id`: whether every forwarded request carries an `X-Request-ID` (the client's if sane, else a new
    /// one), also logged.
    public var requestID = true
    /// Whether request fields with `_` in their names are forwarded (`underscores_in_headers`, off as in nginx:
    /// CGI, PHP and WSGI read `X_Real_IP` as `X-Real-IP`, so a client could impersonate the balancer's fields).
    public var underscoresInHeaders: Bool = false
    /// This node's name in a fleet sharing one store (`node_name`); the host's name and first listen port without.
    public var nodeName: String?
    /// `metrics:`: the Prometheus listener and the tenants with histograms of their own.
    public var metrics = Metrics()

    public init(
        listen: Listen = Listen(),
        workers: Int? = nil,
        admin: Admin = Admin(),
        statePath: String = "run/state.sqlite",
        tls: TLSFiles? = nil,
        tenants: [TenantConfiguration] = [],
        timeouts: Timeouts = Timeouts(),
        limits: Limits = Limits(),
        accessLog: Bool = true
    ) {
        self.listen = listen
        self.workers = workers
        self.admin = admin
        self.statePath = statePath
        self.tls = tls
        self.tenants = tenants
        self.timeouts = timeouts
        self.limits = limits
        self.accessLog = accessLog
    }

    /// `listen:`: the shared public addresses.
    public struct Listen: Sendable, Equatable {
        public var http: [SocketAddress]
        public var https: [SocketAddress]

        public init(http: [SocketAddress] = [], https: [SocketAddress] = []) {
            self.http = http
            self.https = https
        }
    }

    /// `change_log:`: how much of the store's change log (the audit log, and what nodes of a fleet catch up from)
    /// is kept; records beyond either limit are pruned, a write's records together, the latest write's never. A
    /// node whose next change was pruned reads the store whole instead.
    public struct ChangeLog: Sendable, Equatable {
        /// `max_age`: records of writes older than this go (`none`: kept whatever their age). 30 days by default.
        public var maximumAge: TimeAmount?
        /// `max_changes`: about this many of the newest records are kept (`none`: any number). 100,000 by
        /// default: ten `apply`s of 10,000 tenants, some 100 MB at most.
        public var maximumChanges: Int?

        public init(maximumAge: TimeAmount? = .hours(24 * 30), maximumChanges: Int? = 100_000) {
            self.maximumAge = maximumAge
            self.maximumChanges = maximumChanges
        }
    }

    /// `metrics:`. `GET /metrics` on the admin socket works whatever is set here.
    public struct Metrics: Sendable, Equatable {
        /// `listen`: where Prometheus scrapes `GET /metrics` over TCP, without a token; off when `nil`.
        public var listen: SocketAddress?
        /// `tenant_histograms`: tenants that get a request-duration histogram of their own (every tenant shares
        /// the global one: 10,000 tenants × 15 series each would be 150,000 series). Read at start.
        public var tenantHistograms: [String]
        /// `basic_auth_file`: who may read `listen` (HTTP basic authentication; `NAME:PASSWORD` lines, mode 0600,
        /// as ``AdminTokens``); anyone when `nil`. Read at start.
        public var basicAuthFile: String?

        public init(listen: SocketAddress? = nil, tenantHistograms: [String] = [], basicAuthFile: String? = nil) {
            self.listen = listen
            self.tenantHistograms = tenantHistograms
            self.basicAuthFile = basicAuthFile
        }
    }

    /// `admin:`: the operator API.
    public struct Admin: Sendable, Equatable {
        /// Path of the unix socket, created mode 0600.
        public var socket: String
        /// `listen`: a loopback address to serve the API on over TCP too, with bearer tokens; off when `nil`.
        public var listen: SocketAddress?
        /// `token_file`: the tokens of the TCP listener (``AdminTokens``); set exactly when ``listen`` is.
        public var tokenFile: String?
        /// `max_connections`: admin connections open at once, both listeners together.
        public var maximumConnections: Int
        /// `idle_timeout`: an admin connection without a request or an answer for this long is closed.
        public var idleTimeout: TimeAmount

        public init(
            socket: String = "run/admin.sock",
            listen: SocketAddress? = nil,
            tokenFile: String? = nil,
            maximumConnections: Int = AdminServer.Limits.defaultMaximumConnections,
            idleTimeout: TimeAmount = AdminServer.Limits.defaultIdleTimeout
        ) {
            self.socket = socket
            self.listen = listen
            self.tokenFile = tokenFile
            self.maximumConnections = maximumConnections
            self.idleTimeout = idleTimeout
        }
    }

    /// A certificate chain and its private key, both PEM files.
    public struct TLSFiles: Sendable, Equatable {
        public var certificate: String
        public var key: String

        public init(certificate: String, key: String) {
            self.certificate = certificate
            self.key = key
        }
    }

    /// `timeouts:`. Defaults follow what an nginx or HAProxy operator expects (see README).
    public struct Timeouts: Sendable, Equatable {
        /// Time allowed to receive a whole request head, counted from its first byte and not reset by trickling
        /// bytes (HAProxy's `timeout http-request`; slowloris protection). Answered with 408.
        public var clientHeader: TimeAmount
        /// Idle time allowed on a client connection between requests (nginx `keepalive_timeout`).
        public var keepAlive: TimeAmount
        /// Idle time allowed while a client sends a request body (nginx `client_body_timeout`).
        public var clientBody: TimeAmount
        /// Time allowed to establish a backend connection.
        public var upstreamConnect: TimeAmount
        /// Time allowed for a backend to answer, and between two reads of its answer; answered with 504
        /// (nginx `proxy_read_timeout`).
        public var upstreamResponse: TimeAmount
        /// How long an idle pooled backend connection is kept.
        public var upstreamIdle: TimeAmount
        /// Time allowed for a TLS handshake, from the moment the connection is accepted.
        public var tlsHandshake: TimeAmount
        /// Idle time allowed on an upgraded (WebSocket) connection, in either direction (HAProxy's
        /// `timeout tunnel`).
        public var tunnelIdle: TimeAmount
        /// On shutdown, how long in-flight requests may take before connections are cut.
        public var drain: TimeAmount
        /// Longest a client may leave its answer unread (nginx's `send_timeout`): the connection is then closed,
        /// whatever it was doing, and a backend paused for its sake is not blamed.
        public var clientSend: TimeAmount

        public init(
            clientHeader: TimeAmount = .seconds(30),
            keepAlive: TimeAmount = .seconds(75),
            clientBody: TimeAmount = .seconds(60),
            upstreamConnect: TimeAmount = .seconds(5),
            upstreamResponse: TimeAmount = .seconds(60),
            upstreamIdle: TimeAmount = .seconds(60),
            tlsHandshake: TimeAmount = .seconds(10),
            tunnelIdle: TimeAmount = .hours(1),
            drain: TimeAmount = .seconds(30),
            clientSend: TimeAmount = .seconds(60)
        ) {
            self.clientHeader = clientHeader
            self.keepAlive = keepAlive
            self.clientBody = clientBody
            self.upstreamConnect = upstreamConnect
            self.upstreamResponse = upstreamResponse
            self.upstreamIdle = upstreamIdle
            self.tlsHandshake = tlsHandshake
            self.tunnelIdle = tunnelIdle
            self.drain = drain
            self.clientSend = clientSend
        }
    }

    /// `limits:`.
    public struct Limits: Sendable, Equatable {
        /// Largest request head (request line and headers) accepted; larger gets 431.
        public var maxHeaderBytes: Int
        /// Most header fields in one request; more gets 431.
        public var maxHeaderCount: Int
        /// Most client connections open at once across all workers; further ones are closed at accept.
        public var maxConnections: Int
        /// Most idle keep-alive connections kept per backend and per worker.
        public var upstreamKeepAlive: Int

        public init(
            maxHeaderBytes: Int = 32 * 1024,
            maxHeaderCount: Int = 100,
            maxConnections: Int = 10_000,
            upstreamKeepAlive: Int = 64
        ) {
            self.maxHeaderBytes = maxHeaderBytes
            self.maxHeaderCount = maxHeaderCount
            self.maxConnections = maxConnections
            self.upstreamKeepAlive = upstreamKeepAlive
        }
    }
}

/// One tenant as declared in the file.
public struct TenantConfiguration: Sendable, Equatable {
    /// Unique name: letters, digits, `-`, `_` and `.`.
    public var name: String
    /// Domains the tenant owns, lower-cased: exact names or wildcards `*.example.test`.
    public var domains: [String]
    /// Backend addresses, resolved when the file is read.
    public var backends: [SocketAddress]
    /// Weights of backends (`HOST:PORT weight=N`); a backend not listed weighs 1.
    public var weights: [SocketAddress: Int] = [:]
    /// Each backend's `HOST:PORT` as written in the file (a host name stays a name): how logs, status and the admin
    /// API name it, and what its sticky-session cookie is derived from. A backend not listed is named by its
    /// address.
    public var backendNames: [SocketAddress: String] = [:]
    /// Backends marked `drain` in the file: no new requests or tunnels until the mark is removed and the file
    /// reloaded. The durable counterpart of `switchyard backends drain`.
    public var drained: Set<SocketAddress> = []
    /// The tenant's own certificate, chosen by SNI; the default one otherwise.
    public var tls: Configuration.TLSFiles?
    /// Active health check settings; `nil` keeps the defaults.
    public var health: HealthCheckConfiguration?
    /// How a backend is picked for each request.
    public var balance: BalancingAlgorithm
    /// Whether plain-HTTP requests are answered with a 308 redirect to HTTPS.
    public var httpsRedirect: Bool
    /// Idle time allowed on the tenant's upgraded (WebSocket) connections; `nil` means `timeouts.tunnel_idle`.
    public var tunnelIdle: TimeAmount?
    /// Most upgraded connections open at once for the tenant; more upgrade requests get 503.
    public var maxTunnels: Int
    /// Sticky sessions by cookie; `nil` when every request is balanced afresh.
    public var sticky: StickySessionConfiguration?
    /// Protocols a request may upgrade to (`upgrade_protocols`), lower case; `websocket` by default. Any other
    /// `Upgrade` is stripped and the request forwarded as plain HTTP.
    public var upgradeProtocols: [String] = ["websocket"]

    public init(
        name: String,
        domains: [String],
        backends: [SocketAddress],
        tls: Configuration.TLSFiles? = nil,
        health: HealthCheckConfiguration? = nil,
        balance: BalancingAlgorithm = .roundRobin,
        httpsRedirect: Bool = false,
        tunnelIdle: TimeAmount? = nil,
        maxTunnels: Int = 10_000
    ) {
        self.name = name
        self.domains = domains
        self.backends = backends
        self.tls = tls
        self.health = health
        self.balance = balance
        self.httpsRedirect = httpsRedirect
        self.tunnelIdle = tunnelIdle
        self.maxTunnels = maxTunnels
    }
}

/// `balance:` of a tenant.
public enum BalancingAlgorithm: String, Sendable, Equatable, CaseIterable {
    /// Each available backend in turn (`round_robin`, the default).
    case roundRobin = "round_robin"
    /// The available backend with the fewest requests and tunnels in progress, across workers
    /// (`least_connections`); ties go round robin. Suits long requests and WebSockets.
    case leastConnections = "least_connections"
}

/// `sticky:` of a tenant: a client's requests stay on the backend that served its first one, through a cookie the
/// balancer sets (HAProxy's `cookie … insert`, Traefik's `sticky.cookie`). The first request, and any whose backend
/// is no longer available, is balanced as usual and the cookie is (re)issued.
public struct StickySessionConfiguration: Sendable, Equatable {
    /// The default cookie name.
    public static let defaultCookie = "switchyard_backend"

    /// The cookie's name (an RFC 6265 token).
    public var cookie: String
    /// The cookie's `Max-Age`, counted from when it is set (it is not renewed while the client stays on its
    /// backend); `nil` for a session cookie, which browsers drop when they close.
    public var maxAge: TimeAmount?
    /// The cookie's `SameSite` attribute.
    public var sameSite: SameSite

    /// `SameSite` (RFC 6265bis): whether browsers send the cookie on requests started by other sites.
    public enum SameSite: String, Sendable, Equatable, CaseIterable {
        /// On top-level navigations from other sites, not on their POSTs or embedded requests (the default).
        case lax
        /// Never from other sites.
        case strict
        /// Always, for flows that POST back from another site (SAML, OpenID Connect `form_post`, payment returns);
        /// browsers require `Secure` with it, so plain-HTTP answers leave the attribute out.
        case none

        var attribute: String {
            switch self {
            case .lax: return "Lax"
            case .strict: return "Strict"
            case .none: return "None"
            }
        }
    }

    public init(
        cookie: String = StickySessionConfiguration.defaultCookie,
        maxAge: TimeAmount? = nil,
        sameSite: SameSite = .lax
    ) {
        self.cookie = cookie
        self.maxAge = maxAge
        self.sameSite = sameSite
    }
}

/// `health:` of a tenant. Defaults match the platform's existing balancer (interval 15 s, timeout 2 s, rise 2,
/// fall 3).
public struct HealthCheckConfiguration: Sendable, Hashable {
    /// Path probed with `GET`; `nil` means a plain TCP connect.
    public var path: String?
    /// The check's `Host` header; `nil` means the tenant's first domain.
    public var host: String?
    /// Statuses that count as healthy.
    public var expectedStatus: ClosedRange<Int> = 200...399
    public var interval: TimeAmount
    public var timeout: TimeAmount
    /// Consecutive successes that bring a down backend up.
    public var rise: Int
    /// Consecutive failures that take an up backend down.
    public var fall: Int

    public init(
        path: String? = nil,
        interval: TimeAmount = .seconds(15),
        timeout: TimeAmount = .seconds(2),
        rise: Int = 2,
        fall: Int = 3
    ) {
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
    }
}
