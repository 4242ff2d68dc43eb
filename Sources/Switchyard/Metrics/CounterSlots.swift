import Atomics
import NIOCore

/// A fixed set of counters kept once per event loop: each loop adds to its own slot, a scrape sums the slots.
///
/// This is how the data path counts without sharing: a request touches only its loop's slot, which lies on cache
/// lines of its own (slots are 64-byte aligned and padded), so no two cores write the same line and the count costs
/// an uncontended atomic add, never a lock or a line bouncing between cores (HAProxy keeps per-thread counters for the
/// same reason). A reader on another thread sees each slot through relaxed atomic loads: totals are exact once the
/// loops are quiet, and never torn.
///
/// Slots are indexed by the loop's number modulo ``slotCount``: with more loops than slots two loops share one,
/// which the atomic adds keep correct (only slower).
public final class CounterSlots: @unchecked Sendable {
    // @unchecked: `storage` is allocated in `init`, never reassigned, freed in `deinit`, and every access to its
    // memory after `init` is an atomic operation through `UnsafeAtomic`; nothing else is stored.
    private let storage: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>
    /// Counters per slot.
    public let fieldCount: Int
    /// Counters from one slot to the next: `fieldCount` rounded up to a cache line.
    private let stride: Int
    /// How many slots there are.
    public let slotCount: Int

    /// Slots for this many event loops by default: one per core, at most 16 (beyond that loops share slots).
    public static let defaultSlotCount = max(1, min(16, System.coreCount))

    private static let cacheLine = 64
    private static let perLine = cacheLine / MemoryLayout<UnsafeAtomic<Int>.Storage>.stride

    /// - Parameters:
    ///   - fields: counters per slot, at least 1.
    ///   - slots: one per event loop.
    public init(fields: Int, slots: Int = CounterSlots.defaultSlotCount) {
        precondition(fields >= 1 && slots >= 1, "counter slots need a field and a slot")
        fieldCount = fields
        slotCount = slots
        stride = (fields + Self.perLine - 1) / Self.perLine * Self.perLine
        let count = stride * slots
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: count * MemoryLayout<UnsafeAtomic<Int>.Storage>.stride,
            alignment: Self.cacheLine
        )
        storage = raw.bindMemory(to: UnsafeAtomic<Int>.Storage.self, capacity: count)
        storage.initialize(repeating: UnsafeAtomic<Int>.Storage(0), count: count)
    }

    deinit {
        storage.deinitialize(count: stride * slotCount)
        UnsafeMutableRawPointer(storage).deallocate()
    }

    /// Adds `amount` to counter `field` of the slot of loop `loop`.
    @inline(__always)
    public func add(_ amount: Int, to field: Int, loop: Int) {
        precondition(field >= 0 && field < fieldCount, "no such counter")
        let slot = loop % slotCount
        UnsafeAtomic<Int>(at: storage + slot * stride + field).wrappingIncrement(by: amount, ordering: .relaxed)
    }

    /// Counter `field` summed over every slot.
    public func total(_ field: Int) -> Int {
        precondition(field >= 0 && field < fieldCount, "no such counter")
        var sum = 0
        for slot in 0..<slotCount {
            sum &+= UnsafeAtomic<Int>(at: storage + slot * stride + field).load(ordering: .relaxed)
        }
        return sum
    }
}
