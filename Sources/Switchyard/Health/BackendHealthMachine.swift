import NIOCore

/// The outcome of one active health check.
public enum HealthCheckResult: Equatable, Sendable {
    case success
    case failure(String)
}

/// Active health of one backend: `rise` consecutive successes bring a down backend up, `fall` consecutive failures
/// take an up backend down. Backends are considered up at start, as the platform's existing balancer does, so a
/// restart does not turn every tenant away while the first checks run.
///
/// A value type with no clock or I/O: the ``HealthChecker`` feeds it results and publishes its verdict.
struct BackendHealthMachine: Equatable {
    enum State: Equatable {
        case up
        case down
    }

    /// A change worth one log line.
    enum Transition: Equatable {
        case none
        case wentDown(failures: Int, reason: String)
        case cameUp(successes: Int)
    }

    let rise: Int
    let fall: Int
    private(set) var state: State = .up
    private(set) var consecutiveSuccesses = 0
    private(set) var consecutiveFailures = 0

    init(rise: Int, fall: Int) {
        self.rise = max(1, rise)
        self.fall = max(1, fall)
    }

    mutating func record(_ result: HealthCheckResult) -> Transition {
        switch result {
        case .success:
            consecutiveFailures = 0
            consecutiveSuccesses += 1
            if state == .down && consecutiveSuccesses >= rise {
                state = .up
                return .cameUp(successes: consecutiveSuccesses)
            }
        case .failure(let reason):
            consecutiveSuccesses = 0
            consecutiveFailures += 1
            if state == .up && consecutiveFailures >= fall {
                state = .down
                return .wentDown(failures: consecutiveFailures, reason: reason)
            }
        }
        return .none
    }
}
