import Foundation
import NIOConcurrencyHelpers
import Testing

/// The status page of `metrics.listen` in a real browser: headless Chromium driven by Selenium loads it from the
/// real binary, reads the tenants and backend states, and searches; basic authentication is checked with curl.
///
/// Serialized: its tests wait on child processes (see ``ControlPlaneIntegrationTests``).
@Suite("Status page", .serialized)
struct StatusPageIntegrationTests {
    /// Drives Chromium through Selenium: loads `url`, prints the page's facts as JSON, searches for `search`, and
    /// saves a screenshot to `screenshot` when given.
    static let script = #"""
        import json, sys
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By

        url, search, screenshot = sys.argv[1], sys.argv[2], sys.argv[3]
        options = webdriver.ChromeOptions()
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900"):
            options.add_argument(argument)
        options.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.set_page_load_timeout(20)
            driver.get(url)
            tenants = [row.find_elements(By.TAG_NAME, "td")[0].text for row in driver.find_elements(By.CSS_SELECTOR, "tr.tenant")]
            states = [span.text for span in driver.find_elements(By.CSS_SELECTOR, "tr.backend span")]
            refresh = driver.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]").get_attribute("content")
            scripts = len(driver.find_elements(By.TAG_NAME, "script"))
            if screenshot != "-":
                driver.save_screenshot(screenshot)
            box = driver.find_element(By.NAME, "q")
            box.send_keys(search)
            box.submit()
            found = [row.find_elements(By.TAG_NAME, "td")[0].text for row in driver.find_elements(By.CSS_SELECTOR, "tr.tenant")]
            print(json.dumps({"title": driver.title, "tenants": tenants, "states": states, "refresh": refresh,
                              "scripts": scripts, "found": found, "shown": driver.find_element(By.ID, "shown").text}))
        finally:
            driver.quit()
        """#

    @Test("Chromium shows every tenant busiest first with its backends' states; the search box narrows; basic auth")
    func inChromium() async throws {
        let backend = try await TestBackend.start(name: "web")
        let closed = try ExternalProcess.freePort()
        let port = try ExternalProcess.freePort()
        let metricsPort = try ExternalProcess.freePort()
        let usersFile = NSTemporaryDirectory() + "switchyard-users-\(UUID().uuidString.prefix(8))"
        let token = String(repeating: "5e", count: 16)
        try "grafana:\(token)\n".write(toFile: usersFile, atomically: true, encoding: .utf8)
        chmod(usersFile, 0o600)
        defer { try? FileManager.default.removeItem(atPath: usersFile) }
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            workers: 2
            access_log: false
            metrics:
              listen: 127.0.0.1:\(metricsPort)
              basic_auth_file: \(usersFile)
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["127.0.0.1:\(backend.port)"]
              - name: blog
                domains: [blog.test]
                backends: ["127.0.0.1:\(closed)"]
                health: { interval: 1s, timeout: 1s, fall: 1 }
              - name: wiki
                domains: [wiki.test]
                backends: ["127.0.0.1:\(backend.port)"]
            """,
            port: port
        )
        defer { balancer.stop() }
        let base = "http://127.0.0.1:\(metricsPort)"

        // Without credentials, or with wrong ones: 401 and a challenge; with them, the page.
        let anonymous = try ExternalProcess.curl(["-o", "/dev/null", "-w", "%{http_code}", base + "/"])
        #expect(anonymous.stdout == "401")
        let wrong = try ExternalProcess.curl([
            "-o", "/dev/null", "-w", "%{http_code}", "-u", "grafana:nope", base + "/",
        ])
        #expect(wrong.stdout == "401")
        let scrape = try ExternalProcess.curl(["-u", "grafana:\(token)", base + "/metrics?scope=global"])
        #expect(scrape.stdout.contains("switchyard_build_info"))

        // Traffic for shop until the page is read (bounded: 60 s, 6,000 requests), after two samples (2 s apart)
        // have seen it; blog's backend goes down meanwhile.
        let stop = NIOLockedValueBox(false)
        let traffic = Thread {
            let deadline = Date().addingTimeInterval(60)
            var sent = 0
            while Date() < deadline, sent < 6_000, !stop.withLockedValue({ $0 }) {
                _ = try? ExternalProcess.curl(["-o", "/dev/null", "-H", "Host: shop.test", "http://127.0.0.1:\(port)/"])
                sent += 1
            }
        }
        traffic.start()
        try await offThePool { Thread.sleep(forTimeInterval: 4.5) }
        let screenshot = ProcessInfo.processInfo.environment["SWITCHYARD_SCREENSHOT"] ?? "-"
        let url = "http://grafana:\(token)@127.0.0.1:\(metricsPort)/"
        let output = try await offThePool {
            try ExternalProcess.run(
                "/usr/bin/env",
                ["python3", "-c", Self.script, url, "wik", screenshot],
                timeout: 90
            )
        }
        stop.withLockedValue { $0 = true }
        #expect(output.status == 0, "\(output.stderr)")
        let line = output.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let page = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
        #expect(page["title"] as? String == "switchyard status")
        let tenants = page["tenants"] as? [String] ?? []
        #expect(tenants.first == "shop", "\(tenants)")
        #expect(Set(tenants) == ["shop", "blog", "wiki"])
        let states = page["states"] as? [String] ?? []
        #expect(states.filter { $0 == "up" }.count == 2, "\(states)")
        #expect(states.contains("down"), "\(states)")
        #expect(page["refresh"] as? String == "5")
        #expect(page["scripts"] as? Int == 0)
        #expect(page["found"] as? [String] == ["wiki"])
        #expect((page["shown"] as? String)?.contains("matching") == true)
        while traffic.isExecuting { try await Task.sleep(for: .milliseconds(100)) }
        await backend.stop()
    }
}
