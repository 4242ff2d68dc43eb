/// The loop's registered sockets by token: a slab of slots, each with a generation that changes when the slot is
/// freed.
///
/// A token is the slot's index in its low 32 bits and the slot's generation in its high 32 bits; it is what the
/// epoll set hands back with each event. When a descriptor is closed and its slot (and even its descriptor number)
/// reused while events for it are still queued in the batch being handled, those events carry the old generation
/// and ``subscript(_:)`` answers `nil` for them.
struct SlotTable<Entry> {
    private var generations: [UInt32] = []
    private var entries: [Entry?] = []
    private var free: [UInt32] = []

    /// Slots in use or free (the high-water mark).
    var capacity: Int {
        entries.count
    }

    /// Stores `entry` in a free slot; returns its token.
    mutating func insert(_ entry: Entry) -> UInt64 {
        let index: Int
        if let reused = free.popLast() {
            index = Int(reused)
        } else {
            index = entries.count
            entries.append(nil)
            generations.append(0)
        }
        entries[index] = entry
        return UInt64(generations[index]) << 32 | UInt64(index)
    }

    /// The entry `token` names, if its slot still holds it.
    subscript(token: UInt64) -> Entry? {
        let index = Int(truncatingIfNeeded: token & 0xffff_ffff)
        guard index < entries.count, generations[index] == UInt32(truncatingIfNeeded: token >> 32) else {
            return nil
        }
        return entries[index]
    }

    /// The entry in slot `index`, whatever its generation (for sweeps over every slot).
    func entry(at index: Int) -> Entry? {
        entries[index]
    }

    /// Frees `token`'s slot; a token of an older generation frees nothing.
    mutating func remove(_ token: UInt64) {
        let index = Int(truncatingIfNeeded: token & 0xffff_ffff)
        guard index < entries.count, generations[index] == UInt32(truncatingIfNeeded: token >> 32) else { return }
        entries[index] = nil
        generations[index] &+= 1
        free.append(UInt32(index))
    }
}
