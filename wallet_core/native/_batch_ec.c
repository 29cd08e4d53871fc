/* wallet_core._batch_ec: K + t*G for a whole batch of tweaks t, with one field inversion.
 *
 * Hand-written because libsecp256k1's public API cannot do it: every
 * secp256k1_ec_pubkey_combine returns an affine point, so it pays one field inversion per key
 * (a third of a derivation), and its Python-level call costs more again. Here the 32 window
 * points of each key (wallet_core.secp.BatchPointMultiplier's table) are added in Jacobian
 * coordinates with libsecp256k1's own variable-time group code, and all results of the batch
 * go to affine with ONE inversion (secp256k1_ge_set_all_gej_var, Montgomery's trick).
 * No field or group arithmetic is written here: it all comes from the vendored libsecp256k1
 * headers in native/secp256k1 (see the README there). Only public keys and public tweaks pass
 * through, so variable time is fine.
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

/* out[i] = base + sum over windows j of table[j][tweak_i byte j], compressed (or zeros and
 * flags[i] = 1 at infinity). */
static void add_batch(const secp256k1_ge_storage *table, const secp256k1_ge *base,
                      const unsigned char *tweaks, size_t n, secp256k1_gej *sums,
                      secp256k1_ge *affine, unsigned char *out, unsigned char *flags) {
    size_t i, j;
    secp256k1_ge w;
    for (i = 0; i < n; i++) {
        const unsigned char *t = tweaks + 32 * i;
        secp256k1_gej_set_ge(&sums[i], base);
        for (j = 0; j < WINDOWS; j++) {
            secp256k1_ge_from_storage(&w, &table[j * ENTRIES + t[j]]);
            secp256k1_gej_add_ge_var(&sums[i], &sums[i], &w, NULL);
        }
    }
    secp256k1_ge_set_all_gej_var(affine, sums, n);
    for (i = 0; i < n; i++) {
        unsigned char *key = out + 33 * i;
        /* from the Jacobian sums: when every sum is infinity, this version of
         * secp256k1_ge_set_all_gej_var returns without touching affine[] */
        flags[i] = (unsigned char)sums[i].infinity;
        if (sums[i].infinity) {
            memset(key, 0, 33);
            continue;
        }
        secp256k1_fe_normalize_var(&affine[i].x);
        secp256k1_fe_normalize_var(&affine[i].y);
        key[0] = secp256k1_fe_is_odd(&affine[i].y) ? 0x03 : 0x02;
        secp256k1_fe_get_b32(key + 1, &affine[i].x);
    }
}

static PyObject *add_many(PyObject *self, PyObject *args) {
    PyObject *capsule, *keys = NULL, *infinite = NULL, *result = NULL;
    Py_buffer point, tweaks;
    const secp256k1_ge_storage *table;
    secp256k1_ge base;
    secp256k1_gej *sums = NULL;
    secp256k1_ge *affine = NULL;
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
        sums = PyMem_RawMalloc(sizeof(secp256k1_gej) * n);
        affine = PyMem_RawMalloc(sizeof(secp256k1_ge) * n);
        flags = PyMem_RawMalloc(n);
        if (sums == NULL || affine == NULL || flags == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        add_batch(table, &base, tweaks.buf, n, sums, affine,
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
    PyMem_RawFree(sums);
    PyMem_RawFree(affine);
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
