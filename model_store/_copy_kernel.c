/* gru-copy's serving step in C: one word a row, the whole step in one call.
 *
 * model_store.copy_step calls `advance` and `head` with the addresses of contiguous float32
 * (ids: int64, seen: bool) CPU tensors it checked, so this file knows nothing of torch. The
 * arithmetic is the modules' (CopyGRU.advance_state and head_state at one position of a
 * single-layer model), summed in double and rounded to float32 once per output, so a row's
 * answer does not depend on the batch it is in, nor on the order of a kernel's sums.
 * Each call loops over the rows, holding the GIL (a step is tens of microseconds).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The row loops are built twice where GCC can (x86-64): for AVX2 and for any x86-64, the
 * loader picking one at start (ifunc). Both make the same sums in the same order (ISO C: no
 * fused multiply-adds, no reassociation), so the answers are the same bits on either. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

static inline double sigmoid(double a) { return 1.0 / (1.0 + exp(-a)); }

/* sum_i w[i] * x[i] in double: eight running sums, so the adds do not wait on each other
 * (and the compiler may pair them in vector registers), then added in a fixed order. */
static inline double dot(const float *w, const double *x, long n) {
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    long i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += (double)w[i + k] * x[i + k];
    for (; i < n; i++) s[0] += (double)w[i] * x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* y[o] = b[o] + sum_i w[o * n + i] * x[i], o < m (w: m x n, row major as nn.Linear's) */
static inline void linear(const float *w, const float *b, const double *x, long m, long n, double *y) {
    for (long o = 0; o < m; o++) y[o] = (b ? (double)b[o] : 0.0) + dot(w + o * n, x, n);
}

/* An id outside the vocabulary (which the embedding's rows are) is an error, as torch's. */
static int bad_ids(const int64_t *ids, long n, long V) {
    for (long i = 0; i < n; i++)
        if (ids[i] >= V || ids[i] < -1) {
            PyErr_Format(PyExc_IndexError, "id %lld is not in a vocabulary of %ld",
                         (long long)ids[i], V);
            return 1;
        }
    return 0;
}

static int pointers(PyObject *const *args, Py_ssize_t n, void **out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (args[i] == Py_None) {
            out[i] = NULL;
            continue;
        }
        out[i] = PyLong_AsVoidPtr(args[i]);
        if (out[i] == NULL && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* The state after one id a row (see `advance` below). */
static CLONES void advance_rows(long rows, long H, long K, long D, int copy_start,
                                const int64_t *x, const float *h, const float *keys,
                                const int64_t *ids, const uint8_t *seen, float *new_h,
                                float *new_keys, int64_t *new_ids, const float *emb,
                                const float *w_ih, const float *w_hh, const float *b_ih,
                                const float *b_hh, const float *key_w, const float *key_b,
                                double *work) {
    double *gi = work, *gh = work + 3 * H, *hd = work + 6 * H, *ed = work + 7 * H;
    double *key = work + 8 * H;
    for (long b = 0; b < rows; b++) {
        const float *hb = h + b * H;
        const float *e = emb + x[b] * H;
        for (long j = 0; j < H; j++) {
            hd[j] = hb[j];
            ed[j] = e[j];
        }
        linear(w_ih, b_ih, ed, 3 * H, H, gi);
        linear(w_hh, b_hh, hd, 3 * H, H, gh);
        linear(key_w, key_b, hd, D, H, key); /* the last position's key: of the old h */
        for (long j = 0; j < H; j++) {
            double r = sigmoid(gi[j] + gh[j]);
            double z = sigmoid(gi[H + j] + gh[H + j]);
            double n = tanh(gi[2 * H + j] + r * gh[2 * H + j]);
            new_h[b * H + j] = (float)(n + z * (hd[j] - n));
        }
        /* the history moves by one: the oldest entry out, the pending key and id in */
        memcpy(new_keys + b * K * D, keys + b * K * D + D, sizeof(float) * (size_t)((K - 1) * D));
        for (long d = 0; d < D; d++) new_keys[b * K * D + (K - 1) * D + d] = (float)key[d];
        memcpy(new_ids + b * K, ids + b * K + 1, sizeof(int64_t) * (size_t)(K - 1));
        new_ids[b * K + K - 1] = (copy_start || seen[b]) ? x[b] : -1;
    }
}

/* advance(rows, hidden, window, key_size, vocab, copy_start,
 *         x, h, keys, ids, seen, new_h, new_keys, new_ids,
 *         embedding, w_ih, w_hh, b_ih, b_hh, key_w, key_b)
 * x (B) int64; h (B, H); keys (B, K, D); ids (B, K) int64; seen (B) bool;
 * writes new_h (B, H), new_keys (B, K, D), new_ids (B, K). */
static PyObject *advance(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 21) {
        PyErr_SetString(PyExc_TypeError, "advance takes 21 arguments");
        return NULL;
    }
    long rows = PyLong_AsLong(args[0]), H = PyLong_AsLong(args[1]);
    long K = PyLong_AsLong(args[2]), D = PyLong_AsLong(args[3]), V = PyLong_AsLong(args[4]);
    int copy_start = PyObject_IsTrue(args[5]);
    if (PyErr_Occurred()) return NULL;
    void *p[15];
    if (pointers(args + 6, 15, p) < 0) return NULL;
    if (bad_ids(p[0], rows, V)) return NULL;
    double *work = malloc(sizeof(double) * (size_t)(9 * H + D));
    if (!work) return PyErr_NoMemory();
    advance_rows(rows, H, K, D, copy_start, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                 p[9], p[10], p[11], p[12], p[13], p[14], work);
    free(work);
    Py_RETURN_NONE;
}

/* The next-token log-probabilities of a state (see `head` below). */
static CLONES void head_rows(long rows, long H, long K, long D, long V, double eps,
                             const float *h, const float *keys, const int64_t *ids, float *out,
                             const float *q_w, const float *q_b, const float *s_w,
                             const float *s_b, const float *emb, const float *v_w,
                             const float *a_w, const float *bn_w, const float *bn_b,
                             const float *bn_mean, const float *bn_var, const float *o_w,
                             const float *o_b, double *work) {
    double *hd = work, *q = hd + H, *raw = q + D, *offer = raw + K, *offered = offer + K;
    double *seen_w = offered + H, *feature = seen_w + H, *tmp = feature + H, *normed = tmp + H;
    double *logits = normed + H, *copy = logits + V;
    double root = sqrt((double)D);
    for (long b = 0; b < rows; b++) {
        const float *hb = h + b * H;
        const float *kb = keys + b * K * D;
        const int64_t *ib = ids + b * K;
        for (long j = 0; j < H; j++) hd[j] = hb[j];
        linear(q_w, q_b, hd, D, H, q);
        double sentinel;
        linear(s_w, s_b, hd, 1, H, &sentinel);
        /* the copy path's log-softmax over the entries and the sentinel */
        double top = sentinel;
        for (long c = 0; c < K; c++) {
            raw[c] = dot(kb + c * D, q, D) / root;
            if (ib[c] >= 0 && raw[c] > top) top = raw[c];
        }
        double total = exp(sentinel - top);
        for (long c = 0; c < K; c++)
            if (ib[c] >= 0) total += exp(raw[c] - top);
        double log_total = top + log(total);
        double gate = sentinel - log_total; /* the vocabulary's log share */
        for (long v = 0; v < V; v++) copy[v] = 0.0;
        for (long c = 0; c < K; c++)
            if (ib[c] >= 0) copy[ib[c]] += exp(raw[c] - log_total);
        for (long j = 0; j < H; j++) feature[j] = hd[j];
        if (v_w) {
            /* the offer: the attention without the sentinel, over the entries known */
            double best = -INFINITY, sum = 0.0;
            for (long c = 0; c < K; c++)
                if (ib[c] >= 0 && raw[c] > best) best = raw[c];
            for (long c = 0; c < K; c++) {
                offer[c] = ib[c] >= 0 ? exp(raw[c] - best) : 0.0;
                sum += offer[c];
            }
            for (long j = 0; j < H; j++) offered[j] = seen_w[j] = 0.0;
            for (long c = 0; c < K; c++) {
                if (offer[c] == 0.0) continue;
                offer[c] /= sum;
                const float *e = emb + ib[c] * H;
                for (long j = 0; j < H; j++) offered[j] += offer[c] * (double)e[j];
                /* the word after the entry: the next entry's id, where known */
                if (a_w && c + 1 < K && ib[c + 1] >= 0) {
                    const float *a = emb + ib[c + 1] * H;
                    for (long j = 0; j < H; j++) seen_w[j] += offer[c] * (double)a[j];
                }
            }
            linear(v_w, NULL, offered, H, H, tmp);
            for (long j = 0; j < H; j++) feature[j] += tmp[j];
            if (a_w) {
                linear(a_w, NULL, seen_w, H, H, tmp);
                for (long j = 0; j < H; j++) feature[j] += tmp[j];
            }
        }
        for (long j = 0; j < H; j++)
            normed[j] = (feature[j] - (double)bn_mean[j]) / sqrt((double)bn_var[j] + eps)
                            * (double)bn_w[j] + (double)bn_b[j];
        linear(o_w, o_b, normed, V, H, logits);
        double m = -INFINITY, z = 0.0;
        for (long v = 0; v < V; v++)
            if (logits[v] > m) m = logits[v];
        for (long v = 0; v < V; v++) z += exp(logits[v] - m);
        double lz = m + log(z);
        for (long v = 0; v < V; v++) {
            /* p = gate * p_vocab + the copied mass, the copy floored at 1e-30 as the modules */
            double vocab = logits[v] - lz + gate;
            double c = copy[v] > 1e-30 ? copy[v] : 1e-30;
            double lc = log(c);
            double hi = vocab > lc ? vocab : lc, lo = vocab > lc ? lc : vocab;
            out[b * V + v] = (float)(hi + log1p(exp(lo - hi)));
        }
    }
}

/* head(rows, hidden, window, key_size, vocab, eps,
 *      h, keys, ids, out,
 *      query_w, query_b, sentinel_w, sentinel_b, embedding, value_w, after_w,
 *      bn_w, bn_b, bn_mean, bn_var, out_w, out_b)
 * h (B, H); keys (B, K, D); ids (B, K) int64 (-1: empty); writes out (B, V): next-token
 * log-probabilities. value_w and after_w may be None (no offer; no lookahead). */
static PyObject *head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 23) {
        PyErr_SetString(PyExc_TypeError, "head takes 23 arguments");
        return NULL;
    }
    long rows = PyLong_AsLong(args[0]), H = PyLong_AsLong(args[1]);
    long K = PyLong_AsLong(args[2]), D = PyLong_AsLong(args[3]), V = PyLong_AsLong(args[4]);
    double eps = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) return NULL;
    void *p[17];
    if (pointers(args + 6, 17, p) < 0) return NULL;
    if (bad_ids(p[2], rows * K, V)) return NULL;
    size_t need = (size_t)(H + D + 2 * K + 5 * H + 2 * V);
    double *work = malloc(sizeof(double) * need);
    if (!work) return PyErr_NoMemory();
    head_rows(rows, H, K, D, V, eps, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9],
              p[10], p[11], p[12], p[13], p[14], p[15], p[16], work);
    free(work);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"advance", (PyCFunction)(void (*)(void))advance, METH_FASTCALL,
     "gru-copy's state after one id a row (see the file's comments)."},
    {"head", (PyCFunction)(void (*)(void))head, METH_FASTCALL,
     "gru-copy's next-token log-probabilities of a state (see the file's comments)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copy_kernel", "gru-copy's serving step in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__copy_kernel(void) { return PyModule_Create(&module); }
