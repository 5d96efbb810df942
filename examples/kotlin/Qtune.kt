// Qtune.kt: a Kotlin binding of libqtune through JNI (qtune_jni.c), for
// Android apps and JVM desktops, and a host that trains, cancels, resumes
// and generates.
//
//   kotlinc examples/kotlin/Qtune.kt -include-runtime -d out/qtune-kotlin.jar
//   java -Djava.library.path=out -cp out/qtune-kotlin.jar dev.qtune.QtuneKt MODEL DATA WORKDIR
//
// (libqtune.so and libqtune_jni.so in out/; on Android both go in the
// app's jniLibs/<abi>/, built with the NDK's clang for that ABI.)
package dev.qtune

import java.io.Closeable

/** A failed call: status is qtune.h's qtune_status, message its text. */
class QtuneException(val status: Int, message: ByteArray) : RuntimeException(String(message, Charsets.UTF_8))

/** What the JNI glue calls back with (text as UTF-8 bytes). */
interface RawTokenListener {
    fun onToken(token: Int, piece: ByteArray)
}

interface RawProgressListener {
    fun onProgress(iter: Int, kind: ByteArray, phase: ByteArray, loss: Double, microBatch: Int, microBatches: Int)
}

/** One report of a running training (qtune_progress). */
data class Progress(val iter: Int, val kind: String, val phase: String, val loss: Double, val microBatch: Int, val microBatches: Int)

/** The native calls, one per qtune.h function used here. */
object Qtune {
    init {
        System.loadLibrary("qtune_jni")
    }

    @JvmStatic external fun versionBytes(): ByteArray
    @JvmStatic external fun openModel(path: ByteArray, options: ByteArray?): Long
    @JvmStatic external fun closeModel(model: Long)
    @JvmStatic external fun generateBytes(model: Long, options: ByteArray, listener: RawTokenListener?): ByteArray
    @JvmStatic external fun newSession(): Long
    @JvmStatic external fun freeSession(session: Long)
    @JvmStatic external fun cancel(session: Long)
    @JvmStatic external fun trainBytes(session: Long, config: ByteArray, listener: RawProgressListener?): ByteArray

    val version: String
        get() = String(versionBytes(), Charsets.UTF_8)
}

private fun utf8(s: String) = s.toByteArray(Charsets.UTF_8)
private fun text(b: ByteArray) = String(b, Charsets.UTF_8)

/** A model (GGUF, Hugging Face folder, llama2.c); one thread at a time. */
class Model(path: String, optionsJson: String? = null) : Closeable {
    private var handle = Qtune.openModel(utf8(path), optionsJson?.let(::utf8))

    /** Generates (options as qtune_generate's); onToken sees each token's bytes as it is made. */
    fun generate(optionsJson: String, onToken: ((Int, ByteArray) -> Unit)? = null): String {
        val listener = onToken?.let { f ->
            object : RawTokenListener {
                override fun onToken(token: Int, piece: ByteArray) = f(token, piece)
            }
        }
        return text(Qtune.generateBytes(handle, utf8(optionsJson), listener))
    }

    override fun close() {
        Qtune.closeModel(handle)
        handle = 0
    }
}

/** Runs trainings; cancel() may be called from any thread. */
class Session : Closeable {
    private var handle = Qtune.newSession()

    fun train(configJson: String, onProgress: ((Progress) -> Unit)? = null): String {
        val listener = onProgress?.let { f ->
            object : RawProgressListener {
                override fun onProgress(iter: Int, kind: ByteArray, phase: ByteArray, loss: Double, microBatch: Int, microBatches: Int) =
                    f(Progress(iter, text(kind), text(phase), loss, microBatch, microBatches))
            }
        }
        return text(Qtune.trainBytes(handle, utf8(configJson), listener))
    }

    fun cancel() = Qtune.cancel(handle)

    override fun close() {
        Qtune.freeSession(handle)
        handle = 0
    }
}

private fun jsonString(s: String) = "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\""

/** The host: the C example's run (train_generate.c), its output lines too. */
fun main(args: Array<String>) {
    if (args.size < 3) {
        System.err.println("usage: QtuneKt MODEL DATA WORKDIR [CANCEL_AT]")
        System.exit(2)
    }
    val (model, data, work) = args
    val cancelAt = if (args.size > 3) args[3].toInt() else 3
    System.err.println(Qtune.version)
    val config = "{\"model\": ${jsonString(model)}, \"data\": ${jsonString(data)}, \"method\": \"lora\", \"iters\": 6, \"batch_size\": 2," +
        " \"max_seq_length\": 48, \"learning_rate\": 0.005, \"rank\": 4, \"alpha\": 8, \"seed\": 7, \"steps_per_report\": 1," +
        " \"steps_per_eval\": 100, \"save_every\": 100, \"max_mem\": \"64MiB\"," +
        " \"adapter_path\": ${jsonString("$work/adapters")}, \"cache_dir\": ${jsonString("$work/cache")}"
    Session().use { s ->
        val report = { p: Progress ->
            when (p.kind) {
                "phase" -> println("phase ${p.phase}")
                "micro-batch" -> {}
                else -> {
                    println("progress ${p.iter} ${p.kind} ${"%.6f".format(p.loss)}")
                    if (p.kind == "train" && p.iter == cancelAt) s.cancel()
                }
            }
        }
        try {
            s.train("$config}", report)
        } catch (e: QtuneException) {
            if (e.status != 6) throw e // QTUNE_ERR_CANCELLED: resume
            println("cancelled")
            s.train("$config, \"resume\": true}", report)
        }
    }
    Model(model, "{\"adapter\": ${jsonString("$work/adapters")}, \"max_mem\": \"64MiB\"}").use { m ->
        val streamed = StringBuilder()
        val out = m.generate("{\"prompt\": \"Once upon a time\", \"max_tokens\": 24, \"temp\": 0, \"max_mem\": \"64MiB\"}") { _, piece ->
            streamed.append(text(piece))
        }
        System.err.println(streamed)
        println("generated $out")
    }
    try {
        Model("/nonexistent/model.gguf").close()
    } catch (e: QtuneException) {
        println("missing model: status ${e.status}: ${e.message}")
    }
}
