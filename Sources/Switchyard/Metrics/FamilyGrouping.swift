/// Joins the text-format output of several swift-prometheus registries into one valid page: each family's `# HELP`
/// and `# TYPE` lines once, then every sample of that family from every registry, families sorted by name. (The
/// text format wants a family's lines together and its `TYPE` line once; per-tenant registries each write their
/// own. A registry writes its families in no particular order, hence the sort, which makes the page readable.)
///
/// It relies on what swift-prometheus writes: a family's `# HELP` (when it has help) and `# TYPE` lines, then its
/// samples, one per line.
struct FamilyGrouping {
    private struct Family {
        var name: ArraySlice<UInt8>
        var header: [UInt8] = []
        var samples: [UInt8] = []
    }

    private var families: [Family] = []
    private var index: [ArraySlice<UInt8>: Int] = [:]

    /// Adds a registry's output. With `onlyLabel` (`tenant="shop"`), only the samples that contain it are kept;
    /// with `sorted`, each family's samples from this output are sorted (for a registry of a few series whose
    /// order would otherwise change from one scrape to the next).
    mutating func add(_ output: [UInt8], onlyLabel: String? = nil, sorted: Bool = false) {
        if sorted {
            add(Self.sortingSamples(output), onlyLabel: onlyLabel)
            return
        }
        let filter = onlyLabel.map { Array($0.utf8) }
        var current: Int?
        var start = output.startIndex
        while start < output.endIndex {
            let end = output[start...].firstIndex(of: UInt8(ascii: "\n")) ?? output.endIndex
            let line = output[start..<end]
            let next = end < output.endIndex ? end + 1 : end
            defer { start = next }
            if let name = Self.familyName(ofCommentLine: line) {
                let position = family(named: name)
                current = position
                if families[position].samples.isEmpty, !Self.contains(families[position].header, line: line) {
                    families[position].header.append(contentsOf: output[start..<next])
                    if next == end { families[position].header.append(UInt8(ascii: "\n")) }
                }
                continue
            }
            guard let current, !line.isEmpty else { continue }
            if let filter, !Self.contains(line, filter) { continue }
            families[current].samples.append(contentsOf: output[start..<next])
            if next == end { families[current].samples.append(UInt8(ascii: "\n")) }
        }
    }

    /// Writes the families that have samples.
    func write(into page: inout [UInt8]) {
        for family in families.sorted(by: { $0.name.lexicographicallyPrecedes($1.name) })
        where !family.samples.isEmpty {
            page.append(contentsOf: family.header)
            page.append(contentsOf: family.samples)
        }
    }

    private mutating func family(named name: ArraySlice<UInt8>) -> Int {
        if let position = index[name] { return position }
        families.append(Family(name: name))
        index[name] = families.count - 1
        return families.count - 1
    }

    /// `output` with the samples of each counter and gauge family sorted, comment lines kept where they are.
    /// Histograms are left as written: their bucket lines are in `le` order, which a sort would break.
    private static func sortingSamples(_ output: [UInt8]) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(output.count)
        var run: [ArraySlice<UInt8>] = []
        var isHistogram = false
        let histogramType = Array(" histogram".utf8)
        func flush() {
            for line in isHistogram ? run : run.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                result.append(contentsOf: line)
                result.append(UInt8(ascii: "\n"))
            }
            run.removeAll()
        }
        for line in output.split(separator: UInt8(ascii: "\n")) {
            if line.first == UInt8(ascii: "#") {
                flush()
                if line.starts(with: "# TYPE ".utf8) {
                    isHistogram =
                        line.count >= histogramType.count
                        && line.suffix(histogramType.count).elementsEqual(histogramType)
                }
                result.append(contentsOf: line)
                result.append(UInt8(ascii: "\n"))
            } else {
                run.append(line)
            }
        }
        flush()
        return result
    }

    /// The family a `# HELP name …` or `# TYPE name …` line is about.
    private static func familyName(ofCommentLine line: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        let help = Array("# HELP ".utf8)
        let type = Array("# TYPE ".utf8)
        guard line.starts(with: help) || line.starts(with: type) else { return nil }
        let rest = line.dropFirst(help.count)
        let end = rest.firstIndex(of: UInt8(ascii: " ")) ?? rest.endIndex
        return rest[rest.startIndex..<end]
    }

    /// Whether `header` has `line` among its lines (a family's HELP and TYPE come once each).
    private static func contains(_ header: [UInt8], line: ArraySlice<UInt8>) -> Bool {
        guard !header.isEmpty else { return false }
        var start = header.startIndex
        while start < header.endIndex {
            let end = header[start...].firstIndex(of: UInt8(ascii: "\n")) ?? header.endIndex
            if header[start..<end].elementsEqual(line) { return true }
            start = end + 1
        }
        return false
    }

    private static func contains(_ line: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
        guard needle.count <= line.count else { return false }
        var start = line.startIndex
        while start + needle.count <= line.endIndex {
            if line[start..<start + needle.count].elementsEqual(needle) { return true }
            start += 1
        }
        return false
    }
}
