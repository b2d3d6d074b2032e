/* The records of an uncompressed v2 source batch copied into a producer batch as they are encoded.
 *
 * A record of a v2 batch (KIP-98) is: length, attributes, timestampDelta, offsetDelta, then its key, value and
 * headers. Only the two deltas depend on the batch a record sits in, so moving records from several source
 * batches into one producer batch rewrites those two varints (and the length before them) and copies the rest
 * byte for byte. Decoding every record into an object and encoding it again was most of the engine's CPU on small
 * source batches (docs/performance.md, "The record path"). The producer batch's header and CRC are written in
 * Python (workers/engine/aiokafka_hooks.py, ``SplicedBuilder``).
 *
 * Every length is checked against the buffer: a batch that does not parse raises ValueError and copies nothing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 61
#define ATTRIBUTES_AT 21
#define CODEC_MASK 0x07
#define LOG_APPEND_TIME 0x08
/* A rewritten record grows by at most this much: its length, timestampDelta and offsetDelta varints were at
 * least one byte each and become at most 5, 10 and 5 bytes. */
#define MAX_GROWTH 17

static int64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return (int64_t)v;
}

static int32_t be32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

/* A zigzag varint of at most 10 bytes; NULL when it runs past ``end`` or is longer. */
static const uint8_t *read_varlong(const uint8_t *p, const uint8_t *end, int64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && p < end; shift += 7) {
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return p;
        }
    }
    return NULL;
}

static int varlong_size(int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *write_varlong(uint8_t *p, int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static PyObject *corrupt(const char *what) {
    PyErr_Format(PyExc_ValueError, "corrupt record batch: %s", what);
    return NULL;
}

/* Where a record's headers are, and the value of the first header named ``key`` (``value_length`` -1 when there
 * is none, or when its value is null). ``body`` starts at the record's key length; returns -1 if the record does not
 * parse. */
static int find_header(const uint8_t *body, const uint8_t *record_end, const uint8_t *key, Py_ssize_t key_length,
                       const uint8_t **headers_at, int64_t *header_count, const uint8_t **count_end,
                       const uint8_t **value, int64_t *value_length) {
    int64_t n;
    const uint8_t *p = body;
    for (int field = 0; field < 2; field++) { /* the record's key, then its value */
        if ((p = read_varlong(p, record_end, &n)) == NULL || n > record_end - p) return -1;
        if (n > 0) p += n;
    }
    *headers_at = p;
    if ((p = read_varlong(p, record_end, header_count)) == NULL || *header_count < 0) return -1;
    *count_end = p;
    *value_length = -1;
    for (int64_t i = 0; i < *header_count; i++) {
        int64_t name_length, length;
        if ((p = read_varlong(p, record_end, &name_length)) == NULL || name_length < 0 ||
            name_length > record_end - p)
            return -1;
        const uint8_t *name = p;
        p += name_length;
        if ((p = read_varlong(p, record_end, &length)) == NULL || length > record_end - p) return -1;
        if (name_length == key_length && memcmp(name, key, key_length) == 0) {
            /* The first header of that name decides, as in the decoding path (batches.py); a null value is no
             * origin. */
            if (length >= 0) {
                *value = p;
                *value_length = length;
            }
            break;
        }
        if (length > 0) p += length;
    }
    return 0;
}

PyDoc_STRVAR(splice_doc,
    "splice(target, batch, count, base_timestamp, max_timestamp, from_offset, max_size, provenance=None)\n"
    "--\n\n"
    "Append the records of ``batch`` (one uncompressed v2 record batch, header included) at or after source\n"
    "offset ``from_offset`` to ``target``, a bytearray holding a producer batch's 61-byte header and ``count``\n"
    "records whose timestamps are relative to ``base_timestamp`` (ignored when ``count`` is 0: the first record\n"
    "appended sets it). Stops before a record that would take ``target`` past ``max_size`` bytes, unless it\n"
    "holds no record yet.\n\n"
    "``provenance`` (IDENTICAL naming's loop prevention): (header name, loop origin, origin). A record whose\n"
    "first header of that name holds the loop origin is left out; one without it gets it, holding origin.\n\n"
    "Returns (records appended, base_timestamp, max_timestamp, next source offset, records left out, offsets):\n"
    "the next offset is that of the first record not appended, or the batch's end when every record was;\n"
    "offsets lists the source offsets appended when ``provenance`` is given, and is None otherwise.");

static PyObject *splice(PyObject *module, PyObject *args) {
    PyObject *target;
    Py_buffer source;
    long long count, base_timestamp, max_timestamp, from_offset;
    Py_ssize_t max_size;
    Py_buffer name = {0}, loop_origin = {0}, origin = {0};
    PyObject *provenance = Py_None;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!y*LLLLn|O:splice", &PyByteArray_Type, &target, &source, &count, &base_timestamp,
                          &max_timestamp, &from_offset, &max_size, &provenance)) {
        return NULL;
    }
    PyObject *result = NULL, *offsets = NULL;
    int filtering = provenance != Py_None;
    if (filtering && !PyArg_ParseTuple(provenance, "y*y*y*:provenance", &name, &loop_origin, &origin)) {
        PyBuffer_Release(&source);
        return NULL;
    }
    const uint8_t *batch = source.buf;
    Py_ssize_t batch_size = source.len;
    Py_ssize_t start = PyByteArray_GET_SIZE(target);
    if (start < HEADER_SIZE || count < 0) {
        PyErr_SetString(PyExc_ValueError, "the target must hold a batch header and a record count of 0 or more");
        goto done;
    }
    if (batch_size < HEADER_SIZE) {
        corrupt("shorter than its header");
        goto done;
    }
    int64_t length = be32(batch + 8);
    if (length < HEADER_SIZE - 12 || length + 12 > batch_size) {
        corrupt("its length runs past the buffer");
        goto done;
    }
    if (batch[16] != 2) {
        corrupt("not a v2 batch");
        goto done;
    }
    int attributes = (batch[ATTRIBUTES_AT] << 8) | batch[ATTRIBUTES_AT + 1];
    if (attributes & (CODEC_MASK | LOG_APPEND_TIME)) {
        PyErr_SetString(PyExc_ValueError, "only uncompressed batches with CreateTime timestamps are spliced");
        goto done;
    }
    int64_t base_offset = be64(batch);
    int64_t last_offset_delta = be32(batch + 23);
    int64_t first_timestamp = be64(batch + 27);
    int32_t record_count = be32(batch + 57);
    const uint8_t *p = batch + HEADER_SIZE;
    const uint8_t *end = batch + 12 + length;
    if (record_count < 0 || (end - p) < record_count) {
        corrupt("its record count does not fit its length");
        goto done;
    }
    if (filtering && (offsets = PyList_New(0)) == NULL) goto done;

    /* Room for every record at its largest (a stamped record also grows by its header and one more byte of
     * header count); the bytearray is cut to what was written at the end. */
    Py_ssize_t stamp_size = filtering ? 10 + name.len + 10 + origin.len + 1 : 0;
    Py_ssize_t room = (end - p) + (Py_ssize_t)record_count * (MAX_GROWTH + stamp_size);
    if (PyByteArray_Resize(target, start + room) < 0) goto done;
    uint8_t *out = (uint8_t *)PyByteArray_AS_STRING(target) + start;
    uint8_t *out_start = out;
    long long appended = 0, filtered = 0;
    int64_t next_offset = base_offset + last_offset_delta + 1;
    for (int32_t i = 0; i < record_count; i++) {
        int64_t record_length, timestamp_delta, offset_delta;
        const uint8_t *q = read_varlong(p, end, &record_length);
        if (q == NULL || record_length < 3 || record_length > end - q) {
            PyByteArray_Resize(target, start);
            corrupt("a record's length runs past the batch");
            goto done;
        }
        const uint8_t *record_end = q + record_length;
        const uint8_t *body = q + 1; /* past the record's attributes */
        if ((body = read_varlong(body, record_end, &timestamp_delta)) == NULL ||
            (body = read_varlong(body, record_end, &offset_delta)) == NULL) {
            PyByteArray_Resize(target, start);
            corrupt("a record's deltas run past the record");
            goto done;
        }
        p = record_end;
        int64_t offset = base_offset + offset_delta;
        if (offset < from_offset) continue;
        int stamp = 0;
        const uint8_t *headers_at = NULL, *count_end = NULL;
        int64_t header_count = 0;
        if (filtering) {
            const uint8_t *value = NULL;
            int64_t value_length;
            if (find_header(body, record_end, name.buf, name.len, &headers_at, &header_count, &count_end, &value,
                            &value_length) < 0) {
                PyByteArray_Resize(target, start);
                corrupt("a record's key, value or headers run past the record");
                goto done;
            }
            if (value_length == loop_origin.len && memcmp(value, loop_origin.buf, loop_origin.len) == 0) {
                filtered++; /* it came from the target cluster: copying it back would loop */
                continue;
            }
            stamp = value_length < 0;
        }
        int64_t timestamp = first_timestamp + timestamp_delta;
        if (count == 0) {
            base_timestamp = timestamp;
            max_timestamp = timestamp;
        }
        int64_t new_timestamp_delta = timestamp - base_timestamp;
        Py_ssize_t rest = record_end - body;
        if (stamp) {
            rest += varlong_size(header_count + 1) - (count_end - headers_at) + varlong_size(name.len) + name.len +
                    varlong_size(origin.len) + origin.len;
        }
        int64_t new_length = 1 + varlong_size(new_timestamp_delta) + varlong_size(count) + rest;
        Py_ssize_t total = varlong_size(new_length) + new_length;
        if (count > 0 && start + (out - out_start) + total > max_size) {
            next_offset = offset;
            break;
        }
        if (filtering) {
            PyObject *source_offset = PyLong_FromLongLong(offset);
            if (source_offset == NULL || PyList_Append(offsets, source_offset) < 0) {
                Py_XDECREF(source_offset);
                PyByteArray_Resize(target, start);
                goto done;
            }
            Py_DECREF(source_offset);
        }
        out = write_varlong(out, new_length);
        *out++ = *q; /* the record's attributes (unused, 0) */
        out = write_varlong(out, new_timestamp_delta);
        out = write_varlong(out, count);
        if (stamp) {
            memcpy(out, body, headers_at - body);
            out += headers_at - body;
            out = write_varlong(out, header_count + 1);
            memcpy(out, count_end, record_end - count_end);
            out += record_end - count_end;
            out = write_varlong(out, name.len);
            memcpy(out, name.buf, name.len);
            out += name.len;
            out = write_varlong(out, origin.len);
            memcpy(out, origin.buf, origin.len);
            out += origin.len;
        } else {
            memcpy(out, body, record_end - body);
            out += record_end - body;
        }
        if (timestamp > max_timestamp) max_timestamp = timestamp;
        count++;
        appended++;
    }
    if (PyByteArray_Resize(target, start + (out - out_start)) < 0) goto done;
    result = Py_BuildValue("LLLLLO", appended, base_timestamp, max_timestamp, (long long)next_offset, filtered,
                           offsets != NULL ? offsets : Py_None);
done:
    Py_XDECREF(offsets);
    PyBuffer_Release(&source);
    if (filtering) {
        if (name.obj != NULL) PyBuffer_Release(&name);
        if (loop_origin.obj != NULL) PyBuffer_Release(&loop_origin);
        if (origin.obj != NULL) PyBuffer_Release(&origin);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"splice", splice, METH_VARARGS, splice_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "workers.engine._splice",
    "Records of uncompressed v2 batches copied into producer batches without decoding them.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__splice(void) {
    return PyModule_Create(&module);
}
