/* qtune_jni.c: JNI glue between libqtune (qtune.h) and the Kotlin binding
 * in Qtune.kt (class dev.qtune.Qtune), for Android apps and JVM desktops.
 *
 *   cc -shared -fPIC -I capi -I "$JAVA_HOME/include" -I "$JAVA_HOME/include/linux" \
 *      examples/kotlin/qtune_jni.c -L out -lqtune -o out/libqtune_jni.so
 *
 * Text crosses as UTF-8 byte arrays, not jstring: JNI's "modified UTF-8"
 * differs from UTF-8 for NUL and characters beyond the BMP, and a token's
 * piece may be part of a character. Callbacks run on the calling thread,
 * so the JNIEnv of the call is the one they use. A Java exception thrown
 * by a listener is left pending and reported when the call returns; the
 * run goes on (cancel it from the listener to stop it).
 */
#include <jni.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qtune.h"

/* a NUL-terminated copy of a Java byte[] (NULL for null) */
static char *cstr(JNIEnv *env, jbyteArray b) {
    if (b == NULL)
        return NULL;
    jsize n = (*env)->GetArrayLength(env, b);
    char *s = malloc((size_t)n + 1);
    if (s == NULL)
        return NULL;
    (*env)->GetByteArrayRegion(env, b, 0, n, (jbyte *)s);
    s[n] = 0;
    return s;
}

static jbyteArray bytes(JNIEnv *env, const char *s) {
    jsize n = (jsize)strlen(s);
    jbyteArray b = (*env)->NewByteArray(env, n);
    if (b != NULL)
        (*env)->SetByteArrayRegion(env, b, 0, n, (const jbyte *)s);
    return b;
}

/* throws dev.qtune.QtuneException(status, qtune_last_error()) */
static void throwStatus(JNIEnv *env, qtune_status st) {
    jclass cls = (*env)->FindClass(env, "dev/qtune/QtuneException");
    if (cls == NULL)
        return;
    jmethodID init = (*env)->GetMethodID(env, cls, "<init>", "(I[B)V");
    if (init == NULL)
        return;
    jobject ex = (*env)->NewObject(env, cls, init, (jint)st, bytes(env, qtune_last_error()));
    if (ex != NULL)
        (*env)->Throw(env, (jthrowable)ex);
}

/* a result JSON as byte[], released; or the status thrown */
static jbyteArray result(JNIEnv *env, qtune_status st, char *json) {
    if (st != QTUNE_OK) {
        throwStatus(env, st);
        return NULL;
    }
    jbyteArray b = bytes(env, json ? json : "{}");
    qtune_free_string(json);
    return b;
}

/* a call's outcome: a listener's exception, else the result or the status */
static jbyteArray finish(JNIEnv *env, qtune_status st, char *json) {
    if ((*env)->ExceptionCheck(env)) { /* a listener threw: that is the call's outcome */
        qtune_free_string(json);
        return NULL;
    }
    return result(env, st, json);
}

struct call {
    JNIEnv *env;
    jobject listener;
    jmethodID method;
};

/* finds the listener's method (none: fine); 0 with a Java exception pending */
static int bind(struct call *c, const char *name, const char *sig) {
    if (c->listener == NULL)
        return 1;
    jclass lc = (*c->env)->GetObjectClass(c->env, c->listener);
    c->method = (*c->env)->GetMethodID(c->env, lc, name, sig);
    return c->method != NULL;
}

static void on_token(void *user, int32_t token, const char *piece) {
    struct call *c = user;
    if ((*c->env)->ExceptionCheck(c->env))
        return;
    jbyteArray p = bytes(c->env, piece);
    (*c->env)->CallVoidMethod(c->env, c->listener, c->method, (jint)token, p);
    (*c->env)->DeleteLocalRef(c->env, p);
}

static void on_progress(void *user, const qtune_progress *p) {
    struct call *c = user;
    if ((*c->env)->ExceptionCheck(c->env))
        return;
    jbyteArray kind = bytes(c->env, p->kind), phase = bytes(c->env, p->phase);
    (*c->env)->CallVoidMethod(c->env, c->listener, c->method, (jint)p->iter, kind, phase, (jdouble)p->loss,
                              (jint)p->micro_batch, (jint)p->micro_batches);
    (*c->env)->DeleteLocalRef(c->env, kind);
    (*c->env)->DeleteLocalRef(c->env, phase);
}

JNIEXPORT jbyteArray JNICALL Java_dev_qtune_Qtune_versionBytes(JNIEnv *env, jclass cls) {
    (void)cls;
    return bytes(env, qtune_version());
}

JNIEXPORT jlong JNICALL Java_dev_qtune_Qtune_openModel(JNIEnv *env, jclass cls, jbyteArray path, jbyteArray options) {
    (void)cls;
    char *p = cstr(env, path), *o = cstr(env, options);
    qtune_model *m = NULL;
    qtune_status st = qtune_model_open(p, o, &m);
    free(p);
    free(o);
    if (st != QTUNE_OK)
        throwStatus(env, st);
    return (jlong)(intptr_t)m;
}

JNIEXPORT void JNICALL Java_dev_qtune_Qtune_closeModel(JNIEnv *env, jclass cls, jlong model) {
    (void)env;
    (void)cls;
    qtune_model_free((qtune_model *)(intptr_t)model);
}

JNIEXPORT jbyteArray JNICALL Java_dev_qtune_Qtune_generateBytes(JNIEnv *env, jclass cls, jlong model, jbyteArray options,
                                                               jobject listener) {
    (void)cls;
    struct call c = {env, listener, NULL};
    if (!bind(&c, "onToken", "(I[B)V"))
        return NULL;
    char *o = cstr(env, options), *out = NULL;
    qtune_status st = qtune_generate((qtune_model *)(intptr_t)model, o, listener ? on_token : NULL, &c, &out);
    free(o);
    return finish(env, st, out);
}

JNIEXPORT jlong JNICALL Java_dev_qtune_Qtune_newSession(JNIEnv *env, jclass cls) {
    (void)env;
    (void)cls;
    return (jlong)(intptr_t)qtune_session_new();
}

JNIEXPORT void JNICALL Java_dev_qtune_Qtune_freeSession(JNIEnv *env, jclass cls, jlong session) {
    (void)env;
    (void)cls;
    qtune_session_free((qtune_session *)(intptr_t)session);
}

JNIEXPORT void JNICALL Java_dev_qtune_Qtune_cancel(JNIEnv *env, jclass cls, jlong session) {
    (void)env;
    (void)cls;
    qtune_cancel((qtune_session *)(intptr_t)session);
}

JNIEXPORT jbyteArray JNICALL Java_dev_qtune_Qtune_trainBytes(JNIEnv *env, jclass cls, jlong session, jbyteArray config,
                                                            jobject listener) {
    (void)cls;
    struct call c = {env, listener, NULL};
    if (!bind(&c, "onProgress", "(I[B[BDII)V"))
        return NULL;
    char *cfg = cstr(env, config), *out = NULL;
    qtune_status st = qtune_train((qtune_session *)(intptr_t)session, cfg, listener ? on_progress : NULL, NULL, &c, &out);
    free(cfg);
    return finish(env, st, out);
}
