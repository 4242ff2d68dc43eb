import Foundation
import SwitchyardStore
import Testing

@testable import SwitchyardControl

/// `state_password_file`: its first line is the password, and only a file no one else can read is used.
@Suite("State password file")
struct StatePasswordTests {
    @Test("the first line, without its line end; a file others can read, an empty or missing one is refused")
    func reads() throws {
        let path = NSTemporaryDirectory() + "state-password-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "s3cret\r\nignored\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        #expect(try StatePassword.read(from: path, for: "postgres://lb@db:5432/fleet") == "s3cret")

        chmod(path, 0o640)
        let readable = #expect(throws: StoreError.self) {
            try StatePassword.read(from: path, for: "postgres://lb@db:5432/fleet")
        }
        #expect(readable?.description.contains("chmod 600 \(path)") == true, "\(String(describing: readable))")
        #expect(readable?.description.contains("s3cret") == false)

        try "\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        #expect(throws: StoreError.self) { try StatePassword.read(from: path, for: "x") }
        #expect(throws: StoreError.self) { try StatePassword.read(from: path + "-missing", for: "x") }
    }
}
