// A Swift host of libqtune (a sketch for iOS/macOS apps): generate with
// streaming, then train with progress and cancel from another thread.
//
//   swiftc -I examples/swift -L out -lqtune examples/swift/main.swift -o qtune-swift
//   LD_LIBRARY_PATH=out ./qtune-swift MODEL DATA WORKDIR
//
// Not built by the project's tests: Debian 12 has no Swift toolchain
// (see README, "Embedding"). On Apple platforms libqtune is built with
// -buildmode=c-archive for darwin/arm64 or ios/arm64 by Xcode's clang.
import CQtune
import Foundation

struct QtuneError: Error, CustomStringConvertible {
    let status: qtune_status
    let message: String
    var description: String { "qtune status \(status.rawValue): \(message)" }
}

/// Throws the thread's last error when a call did not return QTUNE_OK.
func check(_ st: qtune_status) throws {
    if st != QTUNE_OK { throw QtuneError(status: st, message: String(cString: qtune_last_error())) }
}

/// A result string the library returned, released.
func take(_ p: UnsafeMutablePointer<CChar>?) -> String {
    guard let p = p else { return "" }
    defer { qtune_free_string(p) }
    return String(cString: p)
}

final class Model {
    let handle: OpaquePointer
    init(path: String, options: String? = nil) throws {
        var m: OpaquePointer?
        try check(qtune_model_open(path, options, &m))
        handle = m!
    }
    deinit { qtune_model_free(handle) }

    /// Generates; onToken sees each token's text as it is made.
    func generate(_ options: String, onToken: @escaping (Int32, String) -> Void) throws -> String {
        final class Box { let f: (Int32, String) -> Void; init(_ f: @escaping (Int32, String) -> Void) { self.f = f } }
        let box = Unmanaged.passRetained(Box(onToken))
        defer { box.release() }
        var out: UnsafeMutablePointer<CChar>?
        try check(qtune_generate(handle, options, { user, token, piece in
            // a piece may be part of a UTF-8 character: decoding repairs it
            Unmanaged<Box>.fromOpaque(user!).takeUnretainedValue().f(token, String(cString: piece!))
        }, box.toOpaque(), &out))
        return take(out)
    }
}

final class Session {
    let handle: OpaquePointer
    init() { handle = qtune_session_new() }
    deinit { qtune_session_free(handle) }
    /// Any thread: stops the running training at its next micro-batch.
    func cancel() { qtune_cancel(handle) }

    func train(_ config: String, onProgress: @escaping (qtune_progress) -> Void) throws -> String {
        final class Box { let f: (qtune_progress) -> Void; init(_ f: @escaping (qtune_progress) -> Void) { self.f = f } }
        let box = Unmanaged.passRetained(Box(onProgress))
        defer { box.release() }
        var out: UnsafeMutablePointer<CChar>?
        try check(qtune_train(handle, config, { user, p in
            Unmanaged<Box>.fromOpaque(user!).takeUnretainedValue().f(p!.pointee)
        }, nil, box.toOpaque(), &out))
        return take(out)
    }
}

let args = CommandLine.arguments
guard args.count >= 4 else {
    FileHandle.standardError.write("usage: qtune-swift MODEL DATA WORKDIR\n".data(using: .utf8)!)
    exit(2)
}
let (model, data, work) = (args[1], args[2], args[3])
do {
    let session = Session()
    let config = """
    {"model": "\(model)", "data": "\(data)", "method": "lora", "iters": 6, "batch_size": 2,
     "max_seq_length": 48, "rank": 4, "max_mem": "64MiB", "adapter_path": "\(work)/adapters"
    """
    let report: (qtune_progress) -> Void = { p in
        let kind = String(cString: p.kind)
        if kind == "phase" { print("phase", String(cString: p.phase)) }
        if kind == "train" {
            print("progress", p.iter, kind, p.loss)
            if p.iter == 3 { session.cancel() } // could be any thread, e.g. a UI button
        }
    }
    do {
        print(try session.train(config + "}", onProgress: report))
    } catch let e as QtuneError where e.status == QTUNE_ERR_CANCELLED {
        print("cancelled; resuming")
        print(try session.train(config + ", \"resume\": true}", onProgress: report))
    }
    let m = try Model(path: model, options: "{\"adapter\": \"\(work)/adapters\"}")
    let out = try m.generate("{\"prompt\": \"Once upon a time\", \"max_tokens\": 24, \"temp\": 0}") { _, piece in
        print(piece, terminator: "")
    }
    print("\ngenerated", out)
} catch {
    FileHandle.standardError.write("\(error)\n".data(using: .utf8)!)
    exit(1)
}
