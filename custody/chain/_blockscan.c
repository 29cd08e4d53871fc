/* The watcher's raw block scan in C: `custody.chain.rawblock` documents the Python API.
 *
 * Hand-written because the scan is the watcher's hot path and no library does it: a mainnet
 * block has ~2,500 transactions and ~7,500 outputs, and the pure-Python reader
 * (`rawblock._parse`) needs ~12 us a transaction (30 ms a block) building objects for all of
 * them, while almost none concern an account. This reads the same fields with the same rules,
 * hashes every txid (OpenSSL, as hashlib), and with filters builds objects only for the
 * transactions that may concern an account.
 *
 * A filter is a bitmap (bytes-like, a power of two bytes long) of `custody.match_filter`: a
 * key's bit is Python's own hash of it (`hash(bytes)` of a script; `hash(str)` of a display
 * txid, which for ASCII text is the hash of its bytes) masked to the bitmap's size, computed
 * here by the interpreter's own function so that both sides agree within the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

/* ------------------------------------------------------------------ SHA-256 (OpenSSL) */

/* OpenSSL's SHA-256, as Python's hashlib, with the CPU's SHA instructions where there are some.
   Its low-level interface (deprecated in 3.0, present in every 3.x): EVP's per-digest setup
   costs more than hashing a 200-byte transaction (a block scan: 1.5 ms this way, 3 ms through
   EVP, 5.5 ms with a portable C loop). */
typedef SHA256_CTX sha256_ctx;

static void sha256_init(sha256_ctx *c) { SHA256_Init(c); }

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n) { SHA256_Update(c, p, n); }

static void sha256_final(sha256_ctx *c, uint8_t out[32]) { SHA256_Final(out, c); }

/* The display hex (byte-reversed) of a 32-byte hash into 64 chars. */
static void display_hex(const uint8_t *h, char *out) {
    static const char digits[] = "0123456789abcdef";
    int i;
    for (i = 0; i < 32; i++) {
        out[2 * i] = digits[h[31 - i] >> 4];
        out[2 * i + 1] = digits[h[31 - i] & 15];
    }
}

/* ------------------------------------------------------------------ filters */

typedef struct {
    const uint8_t *bits;
    uint64_t mask; /* bit count - 1; bits == NULL: no filter (everything passes) */
} bitmap;

static Py_hash_t hash_bytes(const void *p, Py_ssize_t n) {
#if PY_VERSION_HEX >= 0x030E0000
    return Py_HashBuffer(p, n);
#else
    return _Py_HashBytes(p, n);
#endif
}

static int bitmap_has(const bitmap *b, const void *key, Py_ssize_t n) {
    uint64_t i;
    if (b->bits == NULL)
        return 1;
    i = (uint64_t)hash_bytes(key, n) & b->mask;
    return b->bits[i >> 3] >> (i & 7) & 1;
}

/* ------------------------------------------------------------------ the scan */

static PyObject *MalformedBlock; /* a ValueError: the bytes are not a block */

typedef struct {
    const uint8_t *p;
    Py_ssize_t pos, end;
    const char *error; /* what was wrong, once something was */
} reader;

static int need(reader *r, uint64_t n, const char *what) {
    if (r->error)
        return 0;
    if ((uint64_t)(r->end - r->pos) < n) {
        r->error = what;
        return 0;
    }
    return 1;
}

static uint64_t varint(reader *r, const char *what) {
    uint8_t first;
    uint64_t v = 0;
    int size, i;
    if (!need(r, 1, what))
        return 0;
    first = r->p[r->pos++];
    if (first < 0xFD)
        return first;
    size = first == 0xFD ? 2 : first == 0xFE ? 4 : 8;
    if (!need(r, size, what))
        return 0;
    for (i = size - 1; i >= 0; i--)
        v = v << 8 | r->p[r->pos + i];
    r->pos += size;
    return v;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    int i;
    for (i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* (display txid, vout) of every input, (value, script) of every output, as the Python reader
   builds them; NULL with an exception set on failure. */
static PyObject *tx_inputs(const uint8_t *p, const Py_ssize_t *in_at, uint64_t n_in) {
    PyObject *list = PyList_New((Py_ssize_t)n_in);
    char hex[64];
    uint64_t i;
    if (list == NULL)
        return NULL;
    for (i = 0; i < n_in; i++) {
        const uint8_t *at = p + in_at[i];
        PyObject *item;
        display_hex(at, hex);
        item = Py_BuildValue("(s#k)", hex, (Py_ssize_t)64, (unsigned long)le(at + 32, 4));
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static PyObject *tx_outputs(const uint8_t *p, const Py_ssize_t *out_at, uint64_t n_out) {
    PyObject *list = PyList_New((Py_ssize_t)n_out);
    uint64_t i;
    if (list == NULL)
        return NULL;
    for (i = 0; i < n_out; i++) {
        reader r = {p, out_at[i] + 8, PY_SSIZE_T_MAX, NULL};
        uint64_t len = varint(&r, "");
        PyObject *item = Py_BuildValue(
            "(Ky#)", (unsigned long long)le(p + out_at[i], 8), (const char *)p + r.pos,
            (Py_ssize_t)len);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* Offsets of inputs/outputs of the transaction being read (grown as needed). */
typedef struct {
    Py_ssize_t *at;
    size_t cap;
} offsets;

static int offsets_fit(offsets *o, uint64_t n) {
    if (n <= o->cap)
        return 1;
    if (n > PY_SSIZE_T_MAX / sizeof(Py_ssize_t)) {
        PyErr_NoMemory();
        return 0;
    }
    PyMem_Free(o->at);
    o->at = PyMem_Malloc((size_t)n * sizeof(Py_ssize_t));
    o->cap = o->at ? (size_t)n : 0;
    if (o->at == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    return 1;
}

static PyObject *scan_block(const uint8_t *p, Py_ssize_t size, const bitmap *scripts,
                            const bitmap *txids, PyObject *spent) {
    reader r = {p, 80, size, NULL};
    offsets ins = {NULL, 0}, outs = {NULL, 0};
    PyObject *txs = NULL, *result = NULL;
    uint64_t count, t;
    uint8_t digest[32];
    char hex[64], prev_hex[64];
    sha256_ctx c;
    int filtered = scripts->bits != NULL || txids->bits != NULL || spent != NULL;

    if (size < 81) {
        PyErr_SetString(MalformedBlock, "malformed block: shorter than a header");
        return NULL;
    }
    count = varint(&r, "transaction count");
    txs = PyList_New(0);
    if (txs == NULL)
        goto fail;
    for (t = 0; t < count && !r.error; t++) {
        Py_ssize_t start = r.pos, body, body_end, i;
        uint64_t n_in, n_out, k;
        int segwit, hit = !filtered, coinbase;
        if (!need(&r, 6, "transaction version"))
            break;
        segwit = p[start + 4] == 0 && p[start + 5] == 1;
        body = start + (segwit ? 6 : 4);
        r.pos = body;
        n_in = varint(&r, "input count");
        /* an input is at least 41 bytes: a larger count cannot fit */
        if (!r.error && n_in > (uint64_t)(r.end - r.pos) / 41)
            r.error = "input count";
        if (r.error || !offsets_fit(&ins, n_in))
            break;
        for (k = 0; k < n_in && !r.error; k++) {
            uint64_t slen;
            if (!need(&r, 36, "input"))
                break;
            ins.at[k] = r.pos;
            r.pos += 36;
            slen = varint(&r, "input script length");
            if (!need(&r, slen, "input script") || !need(&r, slen + 4, "input sequence"))
                break;
            r.pos += (Py_ssize_t)slen + 4;
        }
        n_out = varint(&r, "output count");
        if (!r.error && n_out > (uint64_t)(r.end - r.pos) / 9)
            r.error = "output count";
        if (r.error || !offsets_fit(&outs, n_out))
            break;
        for (k = 0; k < n_out && !r.error; k++) {
            uint64_t slen;
            Py_ssize_t script_at;
            if (!need(&r, 8, "output value"))
                break;
            outs.at[k] = r.pos;
            r.pos += 8;
            slen = varint(&r, "output script length");
            script_at = r.pos;
            if (!need(&r, slen, "output script"))
                break;
            r.pos += (Py_ssize_t)slen;
            if (!hit && scripts->bits != NULL &&
                bitmap_has(scripts, p + script_at, (Py_ssize_t)slen))
                hit = 1;
        }
        body_end = r.pos;
        if (segwit) {
            for (k = 0; k < n_in && !r.error; k++) {
                uint64_t items = varint(&r, "witness item count"), j;
                if (!r.error && items > (uint64_t)(r.end - r.pos))
                    r.error = "witness item count";
                for (j = 0; j < items && !r.error; j++) {
                    uint64_t len = varint(&r, "witness item length");
                    if (need(&r, len, "witness item"))
                        r.pos += (Py_ssize_t)len;
                }
            }
        }
        if (!need(&r, 4, "lock time"))
            break;
        r.pos += 4;
        sha256_init(&c);
        if (segwit) {
            sha256_update(&c, p + start, 4);
            sha256_update(&c, p + body, (size_t)(body_end - body));
            sha256_update(&c, p + r.pos - 4, 4);
        } else {
            sha256_update(&c, p + start, (size_t)(r.pos - start));
        }
        sha256_final(&c, digest);
        sha256_init(&c);
        sha256_update(&c, digest, 32);
        sha256_final(&c, digest);
        display_hex(digest, hex);
        coinbase = n_in == 1;
        for (i = 0; coinbase && i < 32; i++)
            coinbase = p[ins.at[0] + i] == 0;
        if (!hit && txids->bits != NULL && bitmap_has(txids, hex, 64))
            hit = 1;
        for (k = 0; !hit && !coinbase && k < n_in; k++) {
            display_hex(p + ins.at[k], prev_hex);
            if (txids->bits != NULL && bitmap_has(txids, prev_hex, 64))
                hit = 1;
            else if (spent != NULL && PySet_GET_SIZE(spent) > 0) {
                PyObject *key = PyUnicode_FromStringAndSize(prev_hex, 64);
                int found = key == NULL ? -1 : PySet_Contains(spent, key);
                Py_XDECREF(key);
                if (found < 0)
                    goto fail;
                hit = found;
            }
        }
        if (hit) {
            PyObject *txid = PyUnicode_FromStringAndSize(hex, 64), *in_list, *out_list, *tx;
            if (txid == NULL)
                goto fail;
            if (spent != NULL && PySet_Add(spent, txid) < 0) {
                Py_DECREF(txid);
                goto fail;
            }
            in_list = tx_inputs(p, ins.at, n_in);
            out_list = in_list ? tx_outputs(p, outs.at, n_out) : NULL;
            tx = out_list ? Py_BuildValue("(NNNO)", txid, in_list, out_list,
                                          coinbase ? Py_True : Py_False)
                          : NULL;
            if (tx == NULL) {
                Py_DECREF(txid);
                Py_XDECREF(in_list);
                goto fail;
            }
            i = PyList_Append(txs, tx);
            Py_DECREF(tx);
            if (i < 0)
                goto fail;
        }
    }
    if (PyErr_Occurred())
        goto fail;
    if (r.error) {
        PyErr_Format(MalformedBlock, "malformed block: truncated or bad %s in transaction %llu",
                     r.error, (unsigned long long)t);
        goto fail;
    }
    if (r.pos != size) {
        PyErr_SetString(MalformedBlock, "malformed block: extra data after the transactions");
        goto fail;
    }
    sha256_init(&c);
    sha256_update(&c, p, 80);
    sha256_final(&c, digest);
    sha256_init(&c);
    sha256_update(&c, digest, 32);
    sha256_final(&c, digest);
    display_hex(digest, hex);
    display_hex(p + 4, prev_hex);
    result = Py_BuildValue("(s#s#kN)", hex, (Py_ssize_t)64, prev_hex, (Py_ssize_t)64,
                           (unsigned long)le(p + 68, 4), txs);
    txs = NULL;
fail:
    Py_XDECREF(txs);
    PyMem_Free(ins.at);
    PyMem_Free(outs.at);
    return result;
}

/* The bit mask of the filter in `view` (bit count - 1); 0 with ValueError naming `name` if its
 * size is not a power of two bytes. */
static uint64_t filter_mask(const Py_buffer *view, const char *name) {
    if (view->len <= 0 || (view->len & (view->len - 1)) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: a filter's size must be a power of two bytes", name);
        return 0;
    }
    return (uint64_t)view->len * 8 - 1;
}

static int get_bitmap(PyObject *obj, Py_buffer *view, bitmap *out, const char *name) {
    out->bits = NULL;
    out->mask = 0;
    if (obj == Py_None)
        return 1;
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return 0;
    if ((out->mask = filter_mask(view, name)) == 0) {
        PyBuffer_Release(view);
        return 0;
    }
    out->bits = view->buf;
    return 1;
}

static PyObject *scan(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"raw", "scripts", "txids", "spent", NULL};
    Py_buffer raw, sv = {0}, tv = {0};
    PyObject *scripts_obj = Py_None, *txids_obj = Py_None, *spent = Py_None, *result = NULL;
    bitmap scripts, txids;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|OOO", names, &raw, &scripts_obj,
                                     &txids_obj, &spent))
        return NULL;
    if (spent != Py_None && !PySet_Check(spent)) {
        PyErr_SetString(PyExc_TypeError, "spent must be a set of display txids or None");
        PyBuffer_Release(&raw);
        return NULL;
    }
    if (!get_bitmap(scripts_obj, &sv, &scripts, "scripts")) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    if (!get_bitmap(txids_obj, &tv, &txids, "txids")) {
        if (scripts.bits)
            PyBuffer_Release(&sv);
        PyBuffer_Release(&raw);
        return NULL;
    }
    result = scan_block(raw.buf, raw.len, &scripts, &txids, spent == Py_None ? NULL : spent);
    if (scripts.bits)
        PyBuffer_Release(&sv);
    if (txids.bits)
        PyBuffer_Release(&tv);
    PyBuffer_Release(&raw);
    return result;
}

static PyObject *mark(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *keys, *it, *key;
    uint64_t mask, i;
    uint8_t *bits;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*O", &view, &keys))
        return NULL;
    if ((mask = filter_mask(&view, "bits")) == 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    bits = view.buf;
    it = PyObject_GetIter(keys);
    if (it == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    while ((key = PyIter_Next(it)) != NULL) {
        Py_hash_t h = PyObject_Hash(key);
        Py_DECREF(key);
        if (h == -1)
            break;
        i = (uint64_t)h & mask;
        bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    }
    Py_DECREF(it);
    PyBuffer_Release(&view);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mark_packed(PyObject *self, PyObject *args) {
    Py_buffer view, packed;
    const uint8_t *p;
    uint64_t mask, i;
    Py_ssize_t pos = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*y*", &view, &packed))
        return NULL;
    if ((mask = filter_mask(&view, "bits")) == 0)
        goto done;
    p = packed.buf;
    while (pos < packed.len) {
        Py_ssize_t size;
        if (packed.len - pos < 2 || packed.len - pos - 2 < (size = p[pos] << 8 | p[pos + 1])) {
            PyErr_SetString(PyExc_ValueError, "packed keys: a key runs past the end");
            goto done;
        }
        i = (uint64_t)hash_bytes(p + pos + 2, size) & mask;
        ((uint8_t *)view.buf)[i >> 3] |= (uint8_t)(1u << (i & 7));
        pos += 2 + size;
    }
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&packed);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"mark_packed", mark_packed, METH_VARARGS,
     "mark_packed(bits, packed) -> None\n\n"
     "`mark` of the keys in `packed`, each a 2-byte big-endian length and its bytes (as the\n"
     "database packs a batch: one value instead of a row per key)."},
    {"mark", mark, METH_VARARGS,
     "mark(bits, keys) -> None\n\n"
     "Set each key's bit (its hash masked to the bitmap's size) in the writable bitmap `bits`:\n"
     "`custody.match_filter` loads a million keys this way in milliseconds."},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_VARARGS | METH_KEYWORDS,
     "scan(raw, scripts=None, txids=None, spent=None) -> (hash, previous, time, txs)\n\n"
     "A raw block's header fields and its transactions as (txid, inputs, outputs, coinbase);\n"
     "with filters only those that may concern an account (see custody.chain.rawblock).\n"
     "MalformedBlock (a ValueError) naming what is wrong if the block does not parse."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blockscan",
                                    "The watcher's raw block scan (see custody.chain.rawblock).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__blockscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    MalformedBlock = PyErr_NewExceptionWithDoc(
        "custody.chain._blockscan.MalformedBlock", "The bytes are not a block.",
        PyExc_ValueError, NULL);
    if (MalformedBlock == NULL || PyModule_AddObjectRef(m, "MalformedBlock", MalformedBlock) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
