/* wallet_core._batch_ec: K + t*G for a whole batch of tweaks t, a few field inversions a batch.
 *
 * Hand-written because libsecp256k1's public API cannot do it: every
 * secp256k1_ec_pubkey_combine returns an affine point, so it pays one field inversion per key,
 * and its Python-level call costs more again (~10.5 us a key here). The sum per key is the same
 * 33 points (the base K and one point of each of the 32 windows of
 * wallet_core.secp.BatchPointMultiplier's table), added window by window for the whole batch
 * with every running sum kept affine: the slopes (y2 - y1) / (x2 - x1) of all keys share one
 * inversion per window (Montgomery's trick), so an addition costs 5 multiplications and a
 * squaring (~4.4 us a key), against 8 and 3 for libsecp256k1's mixed Jacobian addition with
 * one inversion for the batch (secp256k1_ge_set_all_gej_var: ~6.1 us a key, measured).
 * The affine formula is the only group arithmetic written here; the exceptional cases of it
 * (equal x: a doubling or a sum at infinity, and a running sum at infinity) go through
 * libsecp256k1's own variable-time Jacobian code. All field arithmetic comes from the vendored
 * libsecp256k1 headers in native/secp256k1 (see the README there). Only public keys and public
 * tweaks pass through, so variable time is fine.
 *
 * make_table(points) takes the 32 x 256 window points, each 64 bytes x||y (big-endian), checks
 * each is on the curve and returns a capsule; add_many(table, point, tweaks) takes a 64-byte
 * x||y point and the tweaks as one buffer of 32-byte big-endian values and returns (keys,
 * infinite): keys is 33 bytes of compressed point per tweak (zeros where the sum is the point
 * at infinity), infinite the list of those positions. The GIL is released while it computes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#if !defined(__SIZEOF_INT128__)
#error "_batch_ec needs a compiler with unsigned __int128 (64-bit gcc or clang)"
#endif
#define HAVE___INT128 1
#define USE_FIELD_5X52 1
#define USE_NUM_NONE 1
#define USE_FIELD_INV_BUILTIN 1

#include "secp256k1.h"
#include "util.h"
#include "field_impl.h"
#include "group_impl.h"

#define WINDOWS 32
#define ENTRIES 256
#define TABLE_POINTS (WINDOWS * ENTRIES)
#define TABLE_NAME "wallet_core._batch_ec.table"

static void free_table(PyObject *capsule) {
    PyMem_RawFree(PyCapsule_GetPointer(capsule, TABLE_NAME));
}

/* A 64-byte x||y as a point on the curve; 0 if it is not one. */
static int load_point(secp256k1_ge *r, const unsigned char *xy) {
    secp256k1_fe x, y;
    if (!secp256k1_fe_set_b32(&x, xy) || !secp256k1_fe_set_b32(&y, xy + 32)) {
        return 0;
    }
    secp256k1_ge_set_xy(r, &x, &y);
    return secp256k1_ge_is_valid_var(r);
}

static PyObject *make_table(PyObject *self, PyObject *args) {
    Py_buffer points;
    secp256k1_ge_storage *table;
    secp256k1_ge p;
    Py_ssize_t i;
    PyObject *capsule;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*:make_table", &points)) {
        return NULL;
    }
    if (points.len != (Py_ssize_t)TABLE_POINTS * 64) {
        PyBuffer_Release(&points);
        return PyErr_Format(PyExc_ValueError, "the window table must be %d points of 64 bytes",
                            TABLE_POINTS);
    }
    table = PyMem_RawMalloc(sizeof(secp256k1_ge_storage) * TABLE_POINTS);
    if (table == NULL) {
        PyBuffer_Release(&points);
        return PyErr_NoMemory();
    }
    for (i = 0; i < TABLE_POINTS; i++) {
        if (!load_point(&p, (const unsigned char *)points.buf + 64 * i)) {
            PyBuffer_Release(&points);
            PyMem_RawFree(table);
            return PyErr_Format(PyExc_ValueError, "window table point %zd is not on the curve", i);
        }
        secp256k1_ge_to_storage(&table[i], &p);
    }
    PyBuffer_Release(&points);
    capsule = PyCapsule_New(table, TABLE_NAME, free_table);
    if (capsule == NULL) {
        PyMem_RawFree(table);
    }
    return capsule;
}

/* acc = acc + q for one key whose x coordinates coincide with q's (acc = q: doubling, acc = -q:
 * infinity) or whose acc is infinity: through libsecp256k1's Jacobian code, rare enough. */
static void add_exceptional(secp256k1_ge *acc, const secp256k1_ge *q) {
    secp256k1_gej sum;
    if (acc->infinity) {
        *acc = *q;
        return;
    }
    secp256k1_gej_set_ge(&sum, acc);
    secp256k1_gej_add_ge_var(&sum, &sum, q, NULL);
    secp256k1_ge_set_gej_var(acc, &sum);
}

/* out[i] = base + sum over windows j of table[j][tweak_i byte j], compressed (or zeros and
 * flags[i] = 1 at infinity); the running sums acc[i] stay affine (header comment). */
static void add_batch(const secp256k1_ge_storage *table, const secp256k1_ge *base,
                      const unsigned char *tweaks, size_t n, secp256k1_ge *acc,
                      secp256k1_fe *dx, secp256k1_fe *prefix, unsigned char *out,
                      unsigned char *flags) {
    size_t i, j;
    secp256k1_ge q;
    secp256k1_fe inv, inv_i, lambda, t, x3;
    for (i = 0; i < n; i++) {
        acc[i] = *base;
    }
    for (j = 0; j < WINDOWS; j++) {
        /* forward: dx[i] = q.x - acc.x, prefix[i] = dx[0] * ... * dx[i]; an exceptional key
         * is added here and counts as dx = 1 */
        for (i = 0; i < n; i++) {
            secp256k1_ge_from_storage(&q, &table[j * ENTRIES + tweaks[32 * i + j]]);
            flags[i] = 0;
            if (!acc[i].infinity) {
                secp256k1_fe_negate(&dx[i], &acc[i].x, 1);
                secp256k1_fe_add(&dx[i], &q.x);
                flags[i] = !secp256k1_fe_normalizes_to_zero_var(&dx[i]);
            }
            if (!flags[i]) {
                add_exceptional(&acc[i], &q);
                secp256k1_fe_set_int(&dx[i], 1);
            }
            if (i == 0) {
                prefix[0] = dx[0];
            } else {
                secp256k1_fe_mul(&prefix[i], &prefix[i - 1], &dx[i]);
            }
        }
        secp256k1_fe_inv_var(&inv, &prefix[n - 1]);
        /* backward: inv = 1 / prefix[i] on entering step i, so 1 / dx[i] = inv * prefix[i-1] */
        for (i = n; i-- > 0;) {
            if (i > 0) {
                secp256k1_fe_mul(&inv_i, &inv, &prefix[i - 1]);
                secp256k1_fe_mul(&inv, &inv, &dx[i]);
            } else {
                inv_i = inv;
            }
            if (!flags[i]) {
                continue;
            }
            secp256k1_ge_from_storage(&q, &table[j * ENTRIES + tweaks[32 * i + j]]);
            /* lambda = (q.y - acc.y) / dx; x3 = lambda^2 - acc.x - q.x;
             * y3 = lambda * (acc.x - x3) - acc.y */
            secp256k1_fe_negate(&t, &acc[i].y, 1);
            secp256k1_fe_add(&t, &q.y);
            secp256k1_fe_mul(&lambda, &t, &inv_i);
            secp256k1_fe_sqr(&x3, &lambda);
            secp256k1_fe_negate(&t, &acc[i].x, 1);
            secp256k1_fe_add(&x3, &t);
            secp256k1_fe_negate(&t, &q.x, 1);
            secp256k1_fe_add(&x3, &t);
            secp256k1_fe_normalize_weak(&x3);
            secp256k1_fe_negate(&t, &x3, 1);
            secp256k1_fe_add(&t, &acc[i].x);
            secp256k1_fe_mul(&t, &t, &lambda);
            secp256k1_fe_negate(&acc[i].y, &acc[i].y, 1);
            secp256k1_fe_add(&acc[i].y, &t);
            secp256k1_fe_normalize_weak(&acc[i].y);
            acc[i].x = x3;
        }
    }
    for (i = 0; i < n; i++) {
        unsigned char *key = out + 33 * i;
        flags[i] = (unsigned char)acc[i].infinity;
        if (acc[i].infinity) {
            memset(key, 0, 33);
            continue;
        }
        secp256k1_fe_normalize_var(&acc[i].x);
        secp256k1_fe_normalize_var(&acc[i].y);
        key[0] = secp256k1_fe_is_odd(&acc[i].y) ? 0x03 : 0x02;
        secp256k1_fe_get_b32(key + 1, &acc[i].x);
    }
}

static PyObject *add_many(PyObject *self, PyObject *args) {
    PyObject *capsule, *keys = NULL, *infinite = NULL, *result = NULL;
    Py_buffer point, tweaks;
    const secp256k1_ge_storage *table;
    secp256k1_ge base;
    secp256k1_ge *acc = NULL;
    secp256k1_fe *dx = NULL, *prefix = NULL;
    unsigned char *flags = NULL;
    size_t n, i;
    (void)self;
    if (!PyArg_ParseTuple(args, "Oy*y*:add_many", &capsule, &point, &tweaks)) {
        return NULL;
    }
    if (!PyCapsule_IsValid(capsule, TABLE_NAME)) {
        PyErr_SetString(PyExc_TypeError, "the table must come from make_table");
        goto done;
    }
    table = PyCapsule_GetPointer(capsule, TABLE_NAME);
    if (point.len != 64 || !load_point(&base, point.buf)) {
        PyErr_SetString(PyExc_ValueError, "the point must be 64 bytes x||y on the curve");
        goto done;
    }
    if (tweaks.len % 32 != 0) {
        PyErr_SetString(PyExc_ValueError, "the tweaks must be 32 bytes each");
        goto done;
    }
    n = (size_t)tweaks.len / 32;
    keys = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(33 * n));
    infinite = PyList_New(0);
    if (keys == NULL || infinite == NULL) {
        goto done;
    }
    if (n > 0) {
        acc = PyMem_RawMalloc(sizeof(secp256k1_ge) * n);
        dx = PyMem_RawMalloc(sizeof(secp256k1_fe) * n);
        prefix = PyMem_RawMalloc(sizeof(secp256k1_fe) * n);
        flags = PyMem_RawMalloc(n);
        if (acc == NULL || dx == NULL || prefix == NULL || flags == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        add_batch(table, &base, tweaks.buf, n, acc, dx, prefix,
                  (unsigned char *)PyBytes_AS_STRING(keys), flags);
        Py_END_ALLOW_THREADS
        for (i = 0; i < n; i++) {
            if (flags[i]) {
                PyObject *pos = PyLong_FromSize_t(i);
                if (pos == NULL || PyList_Append(infinite, pos) < 0) {
                    Py_XDECREF(pos);
                    goto done;
                }
                Py_DECREF(pos);
            }
        }
    }
    result = PyTuple_Pack(2, keys, infinite);
done:
    PyMem_RawFree(acc);
    PyMem_RawFree(dx);
    PyMem_RawFree(prefix);
    PyMem_RawFree(flags);
    Py_XDECREF(keys);
    Py_XDECREF(infinite);
    PyBuffer_Release(&point);
    PyBuffer_Release(&tweaks);
    return result;
}

static PyMethodDef methods[] = {
    {"make_table", make_table, METH_VARARGS,
     "make_table(points: bytes) -> table: the 32 x 256 window points, 64 bytes x||y each."},
    {"add_many", add_many, METH_VARARGS,
     "add_many(table, point: bytes, tweaks: bytes) -> (keys, infinite): point + t*G for each "
     "32-byte tweak t, 33-byte compressed keys packed, and the positions at infinity."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_batch_ec",
    "K + t*G for a batch of tweaks with one field inversion (see _batch_ec.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__batch_ec(void) { return PyModule_Create(&module); }
