/* gru-copy's serving step in C: one word a row, the whole step in one call.
 *
 * model_store.copy_step calls these with the addresses of contiguous float32 (ids: int64,
 * seen: bool) CPU tensors it checked, so this file knows nothing of torch. The arithmetic is
 * the modules' (CopyGRU.advance_state and head_state at one position of a single-layer model),
 * summed in double and rounded to float32 once per output, so a row's answer does not depend
 * on the batch it is in, nor on the order of a kernel's sums.
 *
 * - advance(...), head(...): the model's advance_state and head_state, on batched tensors;
 * - step_pool(...): the engine's pass for rows that each feed one id and want their likeliest
 *   words: the state read from and written back into the engine's pool in place (no gather,
 *   no scatter), the next-word probabilities without the words a user cannot type, and each
 *   row's top k (id, prob) pairs as Python lists, as app.engine's `top_rows` gives them.
 *
 * Each call holds the GIL: a step is tens of microseconds, and what it returns is Python's.
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
/* Everything a row loop calls is compiled into each of its clones. */
#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

typedef struct {
    long H, K, D, V;
    int copy_start;
    double eps;
    /* advance */
    const float *emb, *w_ih, *w_hh, *b_ih, *b_hh, *key_w, *key_b;
    /* head (v_w, a_w: NULL without the offer, the lookahead) */
    const float *q_w, *q_b, *s_w, *s_b, *v_w, *a_w, *bn_w, *bn_b, *bn_mean, *bn_var, *o_w, *o_b;
    /* tables of what depends on an id alone (NULL: computed in each row), in double, each the
     * sum `linear` makes (`make_tables`): gi_t (V, 3H) the input gates b_ih + w_ih emb[v];
     * v_t and a_t (V, H) the value's and the lookahead's maps of emb[v] */
    const double *gi_t, *v_t, *a_t;
} Model;

INLINE double sigmoid(double a) { return 1.0 / (1.0 + exp(-a)); }

/* sum_i w[i] * x[i] in double: eight running sums, so the adds do not wait on each other
 * (and the compiler may pair them in vector registers), then added in a fixed order. */
INLINE double dot(const float *w, const double *x, long n) {
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    long i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += (double)w[i + k] * x[i + k];
    for (; i < n; i++) s[0] += (double)w[i] * x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* y[o] = b[o] + sum_i w[o * n + i] * x[i], o < m (w: m x n, row major as nn.Linear's) */
INLINE void linear(const float *w, const float *b, const double *x, long m, long n,
                          double *y) {
    for (long o = 0; o < m; o++) y[o] = (b ? (double)b[o] : 0.0) + dot(w + o * n, x, n);
}

/* Doubles of scratch: one row's advance, or its head. */
static long work_size(const Model *m) {
    long advance = 9 * m->H + m->D, head = 2 * m->K + 6 * m->H + m->D + 2 * m->V;
    return advance > head ? advance : head;
}

/* Row r's new state from its gates' inputs (gi, gh: 3H each), its old h (hd) and the last
 * position's key: into (new_h, new_keys, new_ids), which may be its old state's memory. */
INLINE void update(const Model *m, int64_t x, const double *gi, const double *gh,
                          const double *hd, const double *key, const float *keys,
                          const int64_t *ids, uint8_t seen, float *new_h, float *new_keys,
                          int64_t *new_ids) {
    long H = m->H, K = m->K, D = m->D;
    for (long j = 0; j < H; j++) {
        double r = sigmoid(gi[j] + gh[j]);
        double z = sigmoid(gi[H + j] + gh[H + j]);
        double n = tanh(gi[2 * H + j] + r * gh[2 * H + j]);
        new_h[j] = (float)(n + z * (hd[j] - n));
    }
    /* the history moves by one: the oldest entry out, the pending key and id in */
    memmove(new_keys, keys + D, sizeof(float) * (size_t)((K - 1) * D));
    for (long d = 0; d < D; d++) new_keys[(K - 1) * D + d] = (float)key[d];
    memmove(new_ids, ids + 1, sizeof(int64_t) * (size_t)(K - 1));
    new_ids[K - 1] = (m->copy_start || seen) ? x : -1;
}

/* One row's state after id x: from (h, keys, ids, seen) into (new_h, new_keys, new_ids),
 * which may be the same memory (the pool's row, in place). */
INLINE void advance_one(const Model *m, int64_t x, const float *h, const float *keys,
                        const int64_t *ids, uint8_t seen, float *new_h, float *new_keys,
                        int64_t *new_ids, double *work) {
    long H = m->H, D = m->D;
    double *gh = work + 3 * H, *hd = work + 6 * H, *ed = work + 7 * H;
    double *key = work + 8 * H;
    const double *gi = work;
    for (long j = 0; j < H; j++) hd[j] = h[j];
    if (m->gi_t) {
        gi = m->gi_t + x * 3 * H; /* the same sums, made once */
    } else {
        const float *e = m->emb + x * H;
        for (long j = 0; j < H; j++) ed[j] = e[j];
        linear(m->w_ih, m->b_ih, ed, 3 * H, H, work);
    }
    linear(m->w_hh, m->b_hh, hd, 3 * H, H, gh);
    linear(m->key_w, m->key_b, hd, D, H, key); /* the last position's key: of the old h */
    update(m, x, gi, gh, hd, key, keys, ids, seen, new_h, new_keys, new_ids);
}

/* sum += weight * word v's row: of `table` (the word through a map, tabled) where there is
 * one, else of the embedding (the map applied to the sum afterwards, `add_mapped`). */
INLINE void add_word(const Model *m, const double *table, int64_t v, double weight,
                     double *sum) {
    long H = m->H;
    if (table) {
        const double *t = table + v * H;
        for (long j = 0; j < H; j++) sum[j] += weight * t[j];
    } else {
        const float *e = m->emb + v * H;
        for (long j = 0; j < H; j++) sum[j] += weight * (double)e[j];
    }
}

/* feature += the map w of the words summed by `add_word`: with the table, that sum is already
 * mapped (the weighted sum of the maps, not the map of the weighted sum); tmp: H doubles. */
INLINE void add_mapped(const Model *m, const float *w, const double *table, const double *sum,
                       double *tmp, double *feature) {
    long H = m->H;
    if (!table) {
        linear(w, NULL, sum, H, H, tmp);
        sum = tmp;
    }
    for (long j = 0; j < H; j++) feature[j] += sum[j];
}

/* One row's next-token log-probabilities (V doubles into logp) of output h over its history. */
INLINE void head_one(const Model *m, const float *h, const float *keys,
                            const int64_t *ids, double *logp, double *work) {
    long H = m->H, K = m->K, D = m->D, V = m->V;
    double *hd = work, *q = hd + H, *raw = q + D, *offer = raw + K, *offered = offer + K;
    double *seen_w = offered + H, *feature = seen_w + H, *tmp = feature + H, *normed = tmp + H;
    double *logits = normed + H, *copy = logits + V;
    for (long j = 0; j < H; j++) hd[j] = h[j];
    linear(m->q_w, m->q_b, hd, D, H, q);
    double sentinel;
    linear(m->s_w, m->s_b, hd, 1, H, &sentinel);
    /* the copy path's log-softmax over the entries and the sentinel */
    double root = sqrt((double)D), top = sentinel;
    for (long c = 0; c < K; c++) {
        raw[c] = dot(keys + c * D, q, D) / root;
        if (ids[c] >= 0 && raw[c] > top) top = raw[c];
    }
    double total = exp(sentinel - top);
    for (long c = 0; c < K; c++)
        if (ids[c] >= 0) total += exp(raw[c] - top);
    double log_total = top + log(total);
    double gate = sentinel - log_total; /* the vocabulary's log share */
    for (long v = 0; v < V; v++) copy[v] = 0.0;
    for (long c = 0; c < K; c++)
        if (ids[c] >= 0) copy[ids[c]] += exp(raw[c] - log_total);
    for (long j = 0; j < H; j++) feature[j] = hd[j];
    if (m->v_w) {
        /* the offer: the attention without the sentinel, over the entries known */
        double best = -INFINITY, sum = 0.0;
        for (long c = 0; c < K; c++)
            if (ids[c] >= 0 && raw[c] > best) best = raw[c];
        for (long c = 0; c < K; c++) {
            offer[c] = ids[c] >= 0 ? exp(raw[c] - best) : 0.0;
            sum += offer[c];
        }
        for (long j = 0; j < H; j++) offered[j] = seen_w[j] = 0.0;
        for (long c = 0; c < K; c++) {
            if (offer[c] == 0.0) continue;
            offer[c] /= sum;
            add_word(m, m->v_t, ids[c], offer[c], offered);
            /* the word after the entry: the next entry's id, where known */
            if (m->a_w && c + 1 < K && ids[c + 1] >= 0)
                add_word(m, m->a_t, ids[c + 1], offer[c], seen_w);
        }
        add_mapped(m, m->v_w, m->v_t, offered, tmp, feature);
        if (m->a_w) add_mapped(m, m->a_w, m->a_t, seen_w, tmp, feature);
    }
    for (long j = 0; j < H; j++)
        normed[j] = (feature[j] - (double)m->bn_mean[j]) / sqrt((double)m->bn_var[j] + m->eps)
                        * (double)m->bn_w[j] + (double)m->bn_b[j];
    linear(m->o_w, m->o_b, normed, V, H, logits);
    double mx = -INFINITY, z = 0.0;
    for (long v = 0; v < V; v++)
        if (logits[v] > mx) mx = logits[v];
    for (long v = 0; v < V; v++) z += exp(logits[v] - mx);
    double lz = mx + log(z);
    for (long v = 0; v < V; v++) {
        /* p = gate * p_vocab + the copied mass, the copy floored at 1e-30 as the modules */
        double vocab = logits[v] - lz + gate;
        double c = copy[v] > 1e-30 ? copy[v] : 1e-30;
        double lc = log(c);
        double hi = vocab > lc ? vocab : lc, lo = vocab > lc ? lc : vocab;
        logp[v] = hi + log1p(exp(lo - hi));
    }
}

static CLONES void advance_rows(const Model *m, long rows, const int64_t *x, const float *h,
                                const float *keys, const int64_t *ids, const uint8_t *seen,
                                float *new_h, float *new_keys, int64_t *new_ids, double *work) {
    long H = m->H, K = m->K, D = m->D;
    for (long b = 0; b < rows; b++)
        advance_one(m, x[b], h + b * H, keys + b * K * D, ids + b * K, seen[b], new_h + b * H,
                    new_keys + b * K * D, new_ids + b * K, work);
}

static CLONES void head_rows(const Model *m, long rows, const float *h, const float *keys,
                             const int64_t *ids, float *out, double *work) {
    long H = m->H, K = m->K, D = m->D, V = m->V;
    double *logp = work + work_size(m);
    for (long b = 0; b < rows; b++) {
        head_one(m, h + b * H, keys + b * K * D, ids + b * K, logp, work);
        for (long v = 0; v < V; v++) out[b * V + v] = (float)logp[v];
    }
}

/* Each row: its pool row advanced by x[b] in place, then its next-word probabilities without
 * the banned words (float32, as torch's softmax of the float32 log-probabilities gives them, up
 * to rounding) into probs (rows x V). */
/* The next-word probabilities of one row's float32 logits (or log-probabilities) l, without
 * the banned words: exp(l - logsumexp over the others), in double, rounded once. The one
 * softmax of the engine's answers (`softmax_masked`, and each row of `step_pool`). */
INLINE void masked_softmax(const float *l, long V, const uint8_t *banned, float *out) {
    double mx = -INFINITY, z = 0.0;
    for (long v = 0; v < V; v++)
        if (!banned[v] && (double)l[v] > mx) mx = (double)l[v];
    for (long v = 0; v < V; v++)
        if (!banned[v]) z += exp((double)l[v] - mx);
    double lz = mx + log(z);
    for (long v = 0; v < V; v++) out[v] = banned[v] ? 0.0f : (float)exp((double)l[v] - lz);
}

static CLONES void pool_rows(const Model *m, long rows, const int64_t *slots, const int64_t *x,
                             float *h, float *keys, int64_t *ids, uint8_t *seen,
                             const uint8_t *banned, float *probs, double *work) {
    long H = m->H, K = m->K, D = m->D, V = m->V;
    double *logp = work + work_size(m);
    for (long b = 0; b < rows; b++) {
        long s = (long)slots[b];
        float *hs = h + s * H, *ks = keys + s * K * D, *pb = probs + b * V;
        int64_t *is = ids + s * K;
        advance_one(m, x[b], hs, ks, is, seen[s], hs, ks, is, work);
        seen[s] = 1;
        head_one(m, hs, ks, is, logp, work);
        /* rounded to float32 first, as `head` returns them: the same answer as the gather
         * pass's (`head` then `softmax_masked`) */
        for (long v = 0; v < V; v++) pb[v] = (float)logp[v];
        masked_softmax(pb, V, banned, pb);
    }
}

/* An id outside the vocabulary (which the embedding's rows are) is an error, as torch's; a
 * history's entries may also be -1 (empty), an id fed may not (`lowest` 0). */
static int bad_ids(const int64_t *ids, long n, long V, long lowest) {
    for (long i = 0; i < n; i++)
        if (ids[i] >= V || ids[i] < lowest) {
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

/* The model from its sizes and flags (hidden, window, key_size, vocab, copy_start, eps) and
 * its 19 weights' addresses (None for an absent one): emb, w_ih, w_hh, b_ih, b_hh, key_w,
 * key_b, then query_w, query_b, sentinel_w, sentinel_b, value_w, after_w, bn_w, bn_b, bn_mean,
 * bn_var, out_w, out_b; then its 3 tables' (None: none), gi_t, v_t, a_t (float64). */
#define MODEL_ARGS 28
static int read_model(PyObject *const *args, Model *m) {
    m->H = PyLong_AsLong(args[0]);
    m->K = PyLong_AsLong(args[1]);
    m->D = PyLong_AsLong(args[2]);
    m->V = PyLong_AsLong(args[3]);
    m->copy_start = PyObject_IsTrue(args[4]);
    m->eps = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) return -1;
    void *p[22];
    if (pointers(args + 6, 22, p) < 0) return -1;
    m->emb = p[0], m->w_ih = p[1], m->w_hh = p[2], m->b_ih = p[3], m->b_hh = p[4];
    m->key_w = p[5], m->key_b = p[6], m->q_w = p[7], m->q_b = p[8], m->s_w = p[9];
    m->s_b = p[10], m->v_w = p[11], m->a_w = p[12], m->bn_w = p[13], m->bn_b = p[14];
    m->bn_mean = p[15], m->bn_var = p[16], m->o_w = p[17], m->o_b = p[18];
    m->gi_t = p[19], m->v_t = p[20], m->a_t = p[21];
    if (m->H <= 0 || m->K <= 0 || m->D <= 0 || m->V <= 0 || !m->emb || !m->w_ih || !m->w_hh ||
        !m->b_ih || !m->b_hh || !m->key_w || !m->key_b || !m->q_w || !m->q_b || !m->s_w ||
        !m->s_b || !m->bn_w || !m->bn_b || !m->bn_mean || !m->bn_var || !m->o_w || !m->o_b ||
        (m->a_w && !m->v_w) || (m->v_t && !m->v_w) || (m->a_t && !m->a_w)) {
        PyErr_SetString(PyExc_ValueError, "a model the C step cannot read");
        return -1;
    }
    return 0;
}

/* The start of every call: MODEL_ARGS + `extra` arguments, the model, then an int (`first`);
 * -1 with an error set where they are not that. */
static int model_call(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t extra, const char *name,
                      Model *m, long *first) {
    if (nargs != MODEL_ARGS + extra) {
        PyErr_Format(PyExc_TypeError, "%s: wrong number of arguments", name);
        return -1;
    }
    if (read_model(args, m) < 0) return -1;
    *first = PyLong_AsLong(args[MODEL_ARGS]);
    return PyErr_Occurred() ? -1 : 0;
}

static double *scratch(const Model *m) {
    double *work = malloc(sizeof(double) * (size_t)(work_size(m) + m->V));
    if (!work) PyErr_NoMemory();
    return work;
}

/* advance(*model, rows, x, h, keys, ids, seen, new_h, new_keys, new_ids)
 * x (B) int64; h (B, H); keys (B, K, D); ids (B, K) int64; seen (B) bool;
 * writes new_h (B, H), new_keys (B, K, D), new_ids (B, K). */
static PyObject *advance(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Model m;
    long rows;
    if (model_call(args, nargs, 9, "advance", &m, &rows) < 0) return NULL;
    void *p[8];
    if (pointers(args + MODEL_ARGS + 1, 8, p) < 0) return NULL;
    if (bad_ids(p[0], rows, m.V, 0)) return NULL;
    double *work = scratch(&m);
    if (!work) return NULL;
    advance_rows(&m, rows, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], work);
    free(work);
    Py_RETURN_NONE;
}

/* head(*model, rows, h, keys, ids, out)
 * h (B, H); keys (B, K, D); ids (B, K) int64 (-1: empty); writes out (B, V): next-token
 * log-probabilities. */
static PyObject *head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Model m;
    long rows;
    if (model_call(args, nargs, 5, "head", &m, &rows) < 0) return NULL;
    void *p[4];
    if (pointers(args + MODEL_ARGS + 1, 4, p) < 0) return NULL;
    if (bad_ids(p[2], rows * m.K, m.V, -1)) return NULL;
    double *work = scratch(&m);
    if (!work) return NULL;
    head_rows(&m, rows, p[0], p[1], p[2], p[3], work);
    free(work);
    Py_RETURN_NONE;
}

/* A list of Python ints into n int64s; -1 with an error set if it is not one. */
static int int_list(PyObject *list, int64_t *out, Py_ssize_t n, const char *what) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != n) {
        PyErr_Format(PyExc_ValueError, "%s: a list of %zd ints expected", what, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        out[i] = v;
    }
    return 0;
}

/* Row b's likeliest top[b] words of probs (V): (id, prob) pairs, likeliest first, a tie to
 * the higher id, words of probability 0 left out. */
static PyObject *top_list(const float *probs, long V, long k) {
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    uint8_t taken[1024] = {0}; /* V <= 1024: checked by the caller */
    for (long n = 0; n < k; n++) {
        long best = -1;
        for (long v = V - 1; v >= 0; v--)
            if (!taken[v] && probs[v] > 0.0f && (best < 0 || probs[v] > probs[best])) best = v;
        if (best < 0) break;
        taken[best] = 1;
        PyObject *pair = Py_BuildValue("(ld)", best, (double)probs[best]);
        if (!pair || PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(pair);
    }
    return out;
}

/* step_pool(*model, capacity, slots, x, top, banned, pool_h, pool_keys, pool_ids, pool_seen)
 * slots, x, top: lists of ints, a row each (its pool row, the id it feeds, how many words it
 * wants); banned: bytes of V (1: never predicted). Every input is checked before any row of
 * the pool is written. Returns each row's top words: a list of lists of (id, prob). */
static PyObject *step_pool(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Model m;
    long capacity;
    if (model_call(args, nargs, 9, "step_pool", &m, &capacity) < 0) return NULL;
    PyObject *slot_list = args[MODEL_ARGS + 1], *banned_bytes = args[MODEL_ARGS + 4];
    if (!PyList_Check(slot_list) || !PyBytes_Check(banned_bytes) ||
        PyBytes_GET_SIZE(banned_bytes) != m.V || m.V > 1024) {
        PyErr_SetString(PyExc_ValueError, "step_pool: slots a list, banned bytes of the vocab");
        return NULL;
    }
    Py_ssize_t rows = PyList_GET_SIZE(slot_list);
    void *p[4];
    if (pointers(args + MODEL_ARGS + 5, 4, p) < 0) return NULL;
    float *h = p[0], *keys = p[1];
    int64_t *ids = p[2];
    uint8_t *seen = p[3];
    int64_t *ints = malloc(sizeof(int64_t) * (size_t)(3 * rows + 1));
    double *work = scratch(&m);
    float *probs = malloc(sizeof(float) * (size_t)(rows * m.V + 1));
    PyObject *result = NULL;
    if (!ints || !work || !probs) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    int64_t *slots = ints, *x = ints + rows, *top = ints + 2 * rows;
    if (int_list(slot_list, slots, rows, "slots") < 0 ||
        int_list(args[MODEL_ARGS + 2], x, rows, "x") < 0 ||
        int_list(args[MODEL_ARGS + 3], top, rows, "top") < 0)
        goto done;
    if (bad_ids(x, rows, m.V, 0)) goto done;
    for (Py_ssize_t b = 0; b < rows; b++) {
        if (slots[b] < 0 || slots[b] >= capacity) {
            PyErr_Format(PyExc_IndexError, "slot %lld is not in a pool of %ld",
                         (long long)slots[b], capacity);
            goto done;
        }
        for (Py_ssize_t c = 0; c < b; c++)
            if (slots[c] == slots[b]) {
                PyErr_SetString(PyExc_ValueError, "a slot appears twice in a batch");
                goto done;
            }
        if (bad_ids(ids + slots[b] * m.K, m.K, m.V, -1)) goto done;
    }
    const uint8_t *banned = (const uint8_t *)PyBytes_AS_STRING(banned_bytes);
    pool_rows(&m, rows, slots, x, h, keys, ids, seen, banned, probs, work);
    result = PyList_New(rows);
    if (!result) goto done;
    for (Py_ssize_t b = 0; b < rows; b++) {
        PyObject *row = top_list(probs + b * m.V, m.V, (long)top[b]);
        if (!row) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, b, row);
    }
done:
    free(ints);
    free(work);
    free(probs);
    return result;
}

/* make_tables(*model, gi_t, v_t, a_t): the model's tables (its own table arguments None),
 * written into float64 buffers of (V, 3H), (V, H), (V, H) (v_t, a_t: None where the model
 * has no value map, no lookahead), each entry the sum a row would make (`linear`). */
static CLONES void table_rows(const Model *m, double *gi_t, double *v_t, double *a_t,
                              double *ed) {
    long H = m->H;
    for (long v = 0; v < m->V; v++) {
        const float *e = m->emb + v * H;
        for (long j = 0; j < H; j++) ed[j] = e[j];
        linear(m->w_ih, m->b_ih, ed, 3 * H, H, gi_t + v * 3 * H);
        if (v_t) linear(m->v_w, NULL, ed, H, H, v_t + v * H);
        if (a_t) linear(m->a_w, NULL, ed, H, H, a_t + v * H);
    }
}

static PyObject *make_tables(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Model m;
    if (nargs != MODEL_ARGS + 3) {
        PyErr_SetString(PyExc_TypeError, "make_tables: wrong number of arguments");
        return NULL;
    }
    if (read_model(args, &m) < 0) return NULL;
    void *p[3];
    if (pointers(args + MODEL_ARGS, 3, p) < 0) return NULL;
    if (!p[0] || (p[1] == NULL) != (m.v_w == NULL) || (p[2] == NULL) != (m.a_w == NULL)) {
        PyErr_SetString(PyExc_ValueError, "make_tables: a table for each map the model has");
        return NULL;
    }
    double *ed = malloc(sizeof(double) * (size_t)m.H);
    if (!ed) return PyErr_NoMemory();
    table_rows(&m, p[0], p[1], p[2], ed);
    free(ed);
    Py_RETURN_NONE;
}

static CLONES void softmax_rows(long rows, long V, const float *l, const uint8_t *banned,
                                float *out) {
    for (long b = 0; b < rows; b++) masked_softmax(l + b * V, V, banned, out + b * V);
}

/* softmax_masked(rows, vocab, logits, banned, out): logits and out (rows, V) float32; banned
 * bytes of V (1: never predicted). */
static PyObject *softmax_masked(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "softmax_masked(rows, vocab, logits, banned, out)");
        return NULL;
    }
    long rows = PyLong_AsLong(args[0]), V = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (PyBytes_GET_SIZE(args[3]) != V) {
        PyErr_SetString(PyExc_ValueError, "softmax_masked: banned must be a byte a word");
        return NULL;
    }
    void *p[2];
    PyObject *const ptrs[2] = {args[2], args[4]};
    if (pointers(ptrs, 2, p) < 0) return NULL;
    softmax_rows(rows, V, p[0], (const uint8_t *)PyBytes_AS_STRING(args[3]), p[1]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"advance", (PyCFunction)(void (*)(void))advance, METH_FASTCALL,
     "gru-copy's state after one id a row (see the file's comments)."},
    {"head", (PyCFunction)(void (*)(void))head, METH_FASTCALL,
     "gru-copy's next-token log-probabilities of a state (see the file's comments)."},
    {"softmax_masked", (PyCFunction)(void (*)(void))softmax_masked, METH_FASTCALL,
     "Rows of next-word probabilities from logits, banned words dropped."},
    {"make_tables", (PyCFunction)(void (*)(void))make_tables, METH_FASTCALL,
     "The model's tables of what depends on an id alone (see the file's comments)."},
    {"step_pool", (PyCFunction)(void (*)(void))step_pool, METH_FASTCALL,
     "The engine's pass for rows of one id each, in the pool (see the file's comments)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copy_kernel", "gru-copy's serving step in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__copy_kernel(void) { return PyModule_Create(&module); }
