import Testing

@testable import SwitchyardTLS

/// Session-ticket keys: a rotation keeps the previous key for decryption only, a second rotation forgets it.
@Suite("TicketKeyRing")
struct TicketKeyRingTests {
    @Test("tickets under the current key resume; after one rotation they resume and are renewed; after two, not")
    func rotation() throws {
        let ring = try TicketKeyRing()
        let first = ring.current
        #expect(first.name.count == 16 && first.cipherKey.count == 32 && first.macKey.count == 32)
        #expect(first.name.withUnsafeBufferPointer { ring.key(named: $0.baseAddress!)?.isCurrent } == true)

        try ring.rotate()
        let second = ring.current
        #expect(second != first)
        let previous = first.name.withUnsafeBufferPointer { ring.key(named: $0.baseAddress!) }
        #expect(previous?.key == first)
        #expect(previous?.isCurrent == false)

        try ring.rotate()
        #expect(first.name.withUnsafeBufferPointer { ring.key(named: $0.baseAddress!) } == nil)
        #expect(second.name.withUnsafeBufferPointer { ring.key(named: $0.baseAddress!)?.isCurrent } == false)
    }
}
