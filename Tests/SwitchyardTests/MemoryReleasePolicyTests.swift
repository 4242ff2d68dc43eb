import Testing

@testable import Switchyard

@Suite("Memory release policy")
struct MemoryReleasePolicyTests {
    /// Feeds `steps` (connections open, whether a release is expected) to a policy with a 1,000-connection drop.
    private func run(_ steps: [(connections: Int, release: Bool)], sourceLocation: SourceLocation = #_sourceLocation) {
        var policy = MemoryReleasePolicy(minimumDrop: 1_000)
        for (index, step) in steps.enumerated() {
            let released = policy.observe(connections: step.connections)
            #expect(released == step.release, "step \(index): \(step.connections)", sourceLocation: sourceLocation)
        }
    }

    @Test("memory is released once a burst has ended: a large drop that is also half the peak, and only once")
    func burstEnds() {
        run([
            (100, false), (5_000, false),
            // Down by 1,000 but not by half: still busy.
            (4_000, false), (2_600, false),
            (2_400, true),
            // The peak starts over from there: a small further dip releases nothing, another large one does.
            (2_000, false), (1_200, true), (300, false), (0, true), (0, false),
        ])
    }

    @Test("small loads never trigger a release, however they move")
    func smallLoads() {
        run([(0, false), (900, false), (10, false), (999, false), (0, false), (500, false), (0, false)])
    }
}
