// shmap._shmap — the Python binding's native half (pybind11). python/shmap/__init__.py builds
// the public `shmap.Map` on the `_Core` class defined here.
//
// One _Core is one attachment to one map, with a Python type for its keys and one for its
// values. What the segment records decides which C++ map serves it:
//
//   key     value                   C++ map                           recorded types
//   int     int                     shmap::Map                        uint64 -> uint64
//   int     float                   DynamicMap                        uint64 -> float64
//   int     bytes | str | pickle    StringMap (key: 8 bytes, LE)      uint64le ->
//   string|utf8|pickle bytes   int | float             StringMap (TypedMap<string, V>)   string ->
//   uint64|float64 str     ...                     StringMap (key: its UTF-8)        utf8 -> ...
//   bytes   bytes | str | pickle    StringMap                         string -> string|utf8|pickle
//
// "string" is a byte string (what C++'s StringMap records), "utf8" a byte string holding UTF-8
// text, "pickle" one holding a pickle, "uint64le" an int key as 8 little-endian bytes. Opening
// a map asks the segment for its types (DynamicMap::open), so a map is always read back as it
// was written, and opening it as other Python types is layout_mismatch naming both.
//
// The GIL: held on every single operation (they take well under a microsecond; giving the GIL
// up and taking it back would cost as much), given up around the batched calls, walks, dumps,
// loads, check and compact. update() calls the Python function from inside the C++ update
// callback with the GIL held; an exception in it is caught there, the callback declines the
// write (the value stays as it was), and the exception is raised again once C++ has returned.
//
// fork(): an attachment belongs to the process that made it (docs/DESIGN.md §1). A child
// forked while a _Core was open sees a fork generation (bumped by a pthread_atfork handler) that
// differs from the one the _Core was opened in, and reopens the map by name on first use; the
// inherited attachment is closed without touching the parent's handle slot (MapImpl's
// destructor frees a slot only in the process that owns it).
#include <pthread.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "shmap/shmap.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"
#include "shmap/typed_map.hpp"

namespace py = pybind11;

namespace {

// ---- Types ---------------------------------------------------------------------------------

enum class KeyKind { u64, bytes, str };
enum class ValKind { u64, f64, bytes, str, pickle };

const char* key_name(KeyKind k) {
  switch (k) {
    case KeyKind::u64:
      return "int";
    case KeyKind::bytes:
      return "bytes";
    case KeyKind::str:
      return "str";
  }
  return "?";
}
const char* value_name(ValKind v) {
  switch (v) {
    case ValKind::u64:
      return "int";
    case ValKind::f64:
      return "float";
    case ValKind::bytes:
      return "bytes";
    case ValKind::str:
      return "str";
    case ValKind::pickle:
      return "pickle";
  }
  return "?";
}

KeyKind parse_key(const std::string& s) {
  if (s == "int") return KeyKind::u64;
  if (s == "bytes") return KeyKind::bytes;
  if (s == "str") return KeyKind::str;
  throw py::value_error("key type must be int, bytes or str, not " + s);
}
ValKind parse_value(const std::string& s) {
  if (s == "int") return ValKind::u64;
  if (s == "float") return ValKind::f64;
  if (s == "bytes") return ValKind::bytes;
  if (s == "str") return ValKind::str;
  if (s == "pickle") return ValKind::pickle;
  throw py::value_error("value type must be int, float, bytes, str or \"pickle\", not " + s);
}

shmap::TypeInfo named_string(const char* name) {
  return {0, 1, shmap::TypeInfo::Kind::byte_string, name};
}

bool string_keyed(KeyKind k, ValKind v) {
  return k != KeyKind::u64 || (v != ValKind::u64 && v != ValKind::f64);
}

shmap::DynamicMap::Layout layout_for(KeyKind k, ValKind v) {
  shmap::DynamicMap::Layout l;
  if (!string_keyed(k, v)) {
    l.key = shmap::type_info<std::uint64_t>();
    l.value = v == ValKind::u64 ? shmap::type_info<std::uint64_t>() : shmap::type_info<double>();
    return l;
  }
  l.key = k == KeyKind::u64     ? named_string("uint64le")
          : k == KeyKind::bytes ? shmap::string_type()
                                : named_string("utf8");
  switch (v) {
    case ValKind::u64:
      l.value = shmap::type_info<std::uint64_t>();
      break;
    case ValKind::f64:
      l.value = shmap::type_info<double>();
      break;
    case ValKind::bytes:
      l.value = shmap::string_type();
      break;
    case ValKind::str:
      l.value = named_string("utf8");
      break;
    case ValKind::pickle:
      l.value = named_string("pickle");
      break;
  }
  return l;
}

/// The Python types of a map that records these types; false when no Python map holds them.
bool kinds_of(const shmap::DynamicMap::Layout& l, KeyKind* k, ValKind* v) {
  for (KeyKind kk : {KeyKind::u64, KeyKind::bytes, KeyKind::str}) {
    for (ValKind vv : {ValKind::u64, ValKind::f64, ValKind::bytes, ValKind::str, ValKind::pickle}) {
      const auto want = layout_for(kk, vv);
      if (want.key == l.key && want.value == l.value) {
        *k = kk;
        *v = vv;
        return true;
      }
    }
  }
  return false;
}

// ---- Errors --------------------------------------------------------------------------------

// Module-lifetime objects: handles that hold a reference never given back (a py::object here
// would be released after the interpreter is gone).
py::handle g_error;             // shmap.Error
py::handle g_invalid_argument;  // shmap.InvalidArgument (also a ValueError)

[[noreturn]] void raise_error(shmap::Errc code, const std::string& message) {
  throw shmap::Error(code, message);
}

void translate(const shmap::Error& e) {
  const py::handle type = e.code() == shmap::Errc::invalid_argument ? g_invalid_argument : g_error;
  py::object exc = type(py::str(e.what()));
  exc.attr("code") = py::str(std::string(shmap::errc_name(e.code())));
  PyErr_SetObject(type.ptr(), exc.ptr());
}

[[noreturn]] void key_error(py::handle k) {
  PyErr_SetObject(PyExc_KeyError, k.ptr());
  throw py::error_already_set();
}

// ---- Fork ----------------------------------------------------------------------------------

std::atomic<std::uint64_t> g_fork_generation{0};
void after_fork_in_child() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

// ---- Key and value conversion ----------------------------------------------------------------

std::uint64_t to_u64(py::handle o, const char* what) {
  if (!PyLong_Check(o.ptr())) {
    throw py::type_error(std::string(what) + " must be an int, not " +
                         std::string(py::str(py::type::of(o).attr("__name__"))));
  }
  const unsigned long long x = PyLong_AsUnsignedLongLong(o.ptr());
  if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(std::string(what) + " out of range: this map holds 0 .. 2**64-1, not " +
                          std::string(py::repr(o)));
  }
  return x;
}

/// A batched call's keys (or an int map's values) as a C-contiguous uint64 array, each element
/// held to what to_u64 asks of one: an int in 0 .. 2**64-1. (A cast would wrap -1 to 2**64-1,
/// another key, and truncate 1.5 to 1, where m[-1] and m[1.5] are refused.) Arrays of unsigned
/// ints and bools are used as they are (widened if narrower); signed ones are checked for a
/// negative element, then read as uint64 without a copy; floats and other types are refused. A
/// list (or any sequence numpy does not make an int array of: [2**63, 1] it makes float64) is
/// converted element by element, as m[k] converts one key. `what` names the argument.
using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;
std::uint64_t to_delta(py::handle o);
/// obj (an array or a sequence of ints) as uint64 words. Keys and values (deltas false): each
/// in 0 .. 2**64-1, as m[k] takes them. Deltas for fetch_add (deltas true): each in
/// -2**63 .. 2**64-1, a negative one as its value mod 2**64. Anything but integers (floats, say)
/// is refused, never truncated.
U64Array u64_array(py::handle obj, const char* what, bool deltas = false) {
  auto indexed = [&](std::size_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; };
  const bool given_array = py::isinstance<py::array>(obj);
  py::array a = py::array::ensure(obj);
  if (!a) throw py::type_error(std::string(what) + " must be an array of ints");
  if (a.ndim() != 1) throw py::value_error(std::string(what) + " must be a one-dimensional array");
  const char kind = a.dtype().kind();
  if (kind == 'u' || kind == 'b') return U64Array::ensure(a);
  if (kind == 'i') {
    using I64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
    I64Array s = I64Array::ensure(a);  // no copy for a C-contiguous int64 array
    const std::int64_t* p = s.data();
    const auto n = static_cast<std::size_t>(deltas ? 0 : s.shape(0));  // deltas: all allowed
    for (std::size_t i = 0; i < n; ++i) {
      if (p[i] < 0) [[unlikely]] {
        throw py::value_error(indexed(i) + " out of range: this map holds 0 .. 2**64-1, not " +
                              std::to_string(p[i]) +
                              " (m[k] refuses it too); to use negative ints' bits " +
                              "(mod 2**64), pass numpy.asarray(" + what + ").view(numpy.uint64)");
      }
    }
    // The same memory read as uint64 (every element is >= 0): a view, kept alive by s.
    return U64Array(py::array::ShapeContainer{s.shape(0)},
                    reinterpret_cast<const std::uint64_t*>(p), s);
  }
  if (kind == 'O' || (!given_array && PySequence_Check(obj.ptr()))) {
    // Element by element, as to_u64 converts one (its errors, naming the element).
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(kind == 'O' ? a : obj);
    const std::size_t n = seq.size();
    U64Array out(static_cast<py::ssize_t>(n));
    std::uint64_t* o = out.mutable_data();
    for (std::size_t i = 0; i < n; ++i) {
      const py::object x = seq[i];
      if (deltas) {
        if (!PyLong_Check(x.ptr())) throw py::type_error(indexed(i) + " must be an int");
        o[i] = to_delta(x);
        continue;
      }
      if (PyLong_Check(x.ptr())) {
        const unsigned long long v = PyLong_AsUnsignedLongLong(x.ptr());
        if (v != static_cast<unsigned long long>(-1) || !PyErr_Occurred()) {
          o[i] = v;
          continue;
        }
        PyErr_Clear();
      }
      o[i] = to_u64(x, indexed(i).c_str());  // throws the error m[k] would
    }
    return out;
  }
  throw py::type_error(std::string(what) + " must be an array of ints, not of " +
                       std::string(py::str(a.dtype())) +
                       (deltas ? " (as fetch_add takes an int delta)" : " (as m[k] takes an int)"));
}

/// An int in -2**63 .. 2**64-1, as its value mod 2**64 (a delta for fetch_add).
std::uint64_t to_delta(py::handle o) {
  if (!PyLong_Check(o.ptr())) throw py::type_error("delta must be an int");
  int overflow = 0;
  const long long s = PyLong_AsLongLongAndOverflow(o.ptr(), &overflow);
  if (overflow == 0) {
    if (s == -1 && PyErr_Occurred()) throw py::error_already_set();
    return static_cast<std::uint64_t>(s);
  }
  return to_u64(o, "delta");
}

double to_f64(py::handle o) {
  if (PyFloat_Check(o.ptr())) return PyFloat_AS_DOUBLE(o.ptr());
  if (PyLong_Check(o.ptr())) {
    const double d = PyLong_AsDouble(o.ptr());
    if (d == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    return d;
  }
  throw py::type_error("value must be a float (or an int), not " +
                       std::string(py::str(py::type::of(o).attr("__name__"))));
}

py::handle g_dumps, g_loads, g_protocol;

std::string_view bytes_view(py::handle o, const char* what) {
  if (PyBytes_Check(o.ptr())) {
    return {PyBytes_AS_STRING(o.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(o.ptr()))};
  }
  if (PyByteArray_Check(o.ptr())) {
    return {PyByteArray_AS_STRING(o.ptr()),
            static_cast<std::size_t>(PyByteArray_GET_SIZE(o.ptr()))};
  }
  throw py::type_error(std::string(what) + " must be bytes, not " +
                       std::string(py::str(py::type::of(o).attr("__name__"))));
}

std::string_view str_view(py::handle o, const char* what) {
  if (!PyUnicode_Check(o.ptr())) {
    throw py::type_error(std::string(what) + " must be str, not " +
                         std::string(py::str(py::type::of(o).attr("__name__"))));
  }
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(o.ptr(), &n);
  if (p == nullptr) throw py::error_already_set();
  return {p, static_cast<std::size_t>(n)};
}

/// A key or value as the bytes a string map stores; `keep` holds what the view points into.
std::string_view key_bytes(KeyKind k, py::handle o, std::uint64_t* word) {
  switch (k) {
    case KeyKind::u64:
      *word = to_u64(o, "key");  // little-endian: the machines shmap runs on
      return {reinterpret_cast<const char*>(word), 8};
    case KeyKind::bytes:
      return bytes_view(o, "key");
    case KeyKind::str:
      return str_view(o, "key");
  }
  return {};
}

py::object key_object(KeyKind k, std::string_view b) {
  switch (k) {
    case KeyKind::u64: {
      if (b.size() != 8) raise_error(shmap::Errc::corrupt, "an int key stored with the wrong size");
      std::uint64_t w = 0;
      std::memcpy(&w, b.data(), 8);
      return py::int_(w);
    }
    case KeyKind::bytes:
      return py::bytes(b.data(), b.size());
    case KeyKind::str:
      return py::str(b.data(), b.size());
  }
  return py::none();
}

/// A pickle of protocol 4 or 5 opens with PROTO (2 bytes) and, unless it is tiny, a FRAME
/// opcode (1 + 8 bytes) stating the length of what follows. Framing is optional (PEP 3154:
/// pickle.loads reads a pickle with or without frames), so when the one frame covers the whole
/// rest, it is left out: 9 bytes less per value, and a small int's pickle (5-6 bytes) then fits
/// in its bucket (entry_list.hpp, short entries). Anything else is kept as it is.
void strip_frame(std::string* p) {
  constexpr unsigned char kProto = 0x80, kFrame = 0x95;
  if (p->size() < 11 || static_cast<unsigned char>((*p)[0]) != kProto ||
      static_cast<unsigned char>((*p)[1]) < 4 || static_cast<unsigned char>((*p)[2]) != kFrame) {
    return;
  }
  std::uint64_t len = 0;
  std::memcpy(&len, p->data() + 3, 8);  // little-endian, as the pickle format states
  if (len != p->size() - 11) return;
  p->erase(2, 9);
}

/// A value's stored bytes, written to *out.
void value_bytes(ValKind v, py::handle o, std::string* out) {
  switch (v) {
    case ValKind::u64: {
      const std::uint64_t x = to_u64(o, "value");
      out->assign(reinterpret_cast<const char*>(&x), 8);
      return;
    }
    case ValKind::f64: {
      const double d = to_f64(o);
      out->assign(reinterpret_cast<const char*>(&d), 8);
      return;
    }
    case ValKind::bytes: {
      const auto b = bytes_view(o, "value");
      out->assign(b.data(), b.size());
      return;
    }
    case ValKind::str: {
      const auto b = str_view(o, "value");
      out->assign(b.data(), b.size());
      return;
    }
    case ValKind::pickle: {
      // Vectorcall, not pybind11's call (which builds an argument tuple).
      PyObject* args[] = {o.ptr(), g_protocol.ptr()};
      py::object p =
          py::reinterpret_steal<py::object>(PyObject_Vectorcall(g_dumps.ptr(), args, 2, nullptr));
      if (!p) throw py::error_already_set();
      const auto b = bytes_view(p, "pickle");
      out->assign(b.data(), b.size());
      strip_frame(out);
      return;
    }
  }
}

py::object unpickle(py::handle bytes) {
  py::object v = py::reinterpret_steal<py::object>(PyObject_CallOneArg(g_loads.ptr(), bytes.ptr()));
  if (!v) throw py::error_already_set();
  return v;
}

/// A new reference to the Python object of a stored value, or nullptr with the Python error
/// set; a pickle as its bytes (not unpickled). Calls no Python code and never throws: it runs
/// inside StringMap::visit_value, under a read pin.
PyObject* new_value_ref(ValKind v, std::string_view b) noexcept {
  switch (v) {
    case ValKind::u64: {
      std::uint64_t x = 0;
      std::memcpy(&x, b.data(), std::min<std::size_t>(8, b.size()));
      return PyLong_FromUnsignedLongLong(x);
    }
    case ValKind::f64: {
      double d = 0;
      std::memcpy(&d, b.data(), std::min<std::size_t>(8, b.size()));
      return PyFloat_FromDouble(d);
    }
    case ValKind::bytes:
    case ValKind::pickle:
      return PyBytes_FromStringAndSize(b.data(), static_cast<Py_ssize_t>(b.size()));
    case ValKind::str:
      return PyUnicode_DecodeUTF8(b.data(), static_cast<Py_ssize_t>(b.size()), nullptr);
  }
  PyErr_SetString(PyExc_SystemError, "shmap: unknown value type");
  return nullptr;
}

py::object value_object(ValKind v, std::string_view b) {
  switch (v) {
    case ValKind::u64: {
      std::uint64_t x = 0;
      std::memcpy(&x, b.data(), std::min<std::size_t>(8, b.size()));
      return py::int_(x);
    }
    case ValKind::f64: {
      double d = 0;
      std::memcpy(&d, b.data(), std::min<std::size_t>(8, b.size()));
      return py::float_(d);
    }
    case ValKind::bytes:
      return py::bytes(b.data(), b.size());
    case ValKind::str:
      return py::str(b.data(), b.size());
    case ValKind::pickle: {
      // A bytes copy, not a view of b: nothing the unpickling keeps can outlive b's memory.
      py::object view = py::reinterpret_steal<py::object>(
          PyBytes_FromStringAndSize(b.data(), static_cast<Py_ssize_t>(b.size())));
      if (!view) throw py::error_already_set();
      py::object v =
          py::reinterpret_steal<py::object>(PyObject_CallOneArg(g_loads.ptr(), view.ptr()));
      if (!v) throw py::error_already_set();
      return v;
    }
  }
  return py::none();
}

// ---- The backend ---------------------------------------------------------------------------

using Backend = std::variant<shmap::Map, shmap::DynamicMap, shmap::StringMap>;
enum class Mode { open, create, open_or_create };

struct Opened {
  std::shared_ptr<Backend> backend;
  KeyKind key;
  ValKind value;
  bool created = false;
};

std::string describe(const shmap::DynamicMap::Layout& l) {
  return l.key.name + " -> " + l.value.name;
}

/// Opens map `name`; key/value empty: whatever types it records (they must be Python ones).
Opened open_existing(const std::string& name, std::optional<KeyKind> key,
                     std::optional<ValKind> value, bool read_only) {
  // The types first, through a read-only attachment: it takes no handle slot, so a map with
  // max_handles = N still takes N Python attachments.
  shmap::DynamicMap::Layout recorded;
  {
    shmap::OpenOptions probe_options;
    probe_options.read_only = true;
    const shmap::DynamicMap probe = shmap::DynamicMap::open(name, probe_options);
    recorded = {probe.key_type(), probe.value_type()};
    if (probe.is_multimap()) {
      raise_error(shmap::Errc::layout_mismatch, "map '" + name + "' is a multimap (" +
                                                    describe(recorded) +
                                                    "); open it with shmap.Multimap");
    }
  }
  Opened o;
  if (!kinds_of(recorded, &o.key, &o.value)) {
    raise_error(shmap::Errc::layout_mismatch,
                "map '" + name + "' holds " + describe(recorded) +
                    ", which no Python map holds (Python maps: int -> int, int -> float, and "
                    "bytes/str/int keys with bytes/str/pickle/int/float values)");
  }
  if ((key && *key != o.key) || (value && *value != o.value)) {
    raise_error(shmap::Errc::layout_mismatch,
                "map '" + name + "' holds " + key_name(o.key) + " -> " + value_name(o.value) +
                    " (recorded as " + describe(recorded) + "); opened as " +
                    key_name(key.value_or(o.key)) + " -> " + value_name(value.value_or(o.value)) +
                    ": open it with the types it was created with (or leave key and value out)");
  }
  shmap::OpenOptions oo;
  oo.read_only = read_only;
  // Then the attachment itself, checked against what the probe saw (the map may have been
  // removed and made again with other types in between).
  const auto replaced = [&] {
    raise_error(shmap::Errc::layout_mismatch,
                "map '" + name + "' was replaced by another while being opened; open it again");
  };
  if (o.key == KeyKind::u64 && o.value == ValKind::u64) {
    o.backend = std::make_shared<Backend>(shmap::Map::open(name, oo));  // checks uint64 itself
  } else if (!string_keyed(o.key, o.value)) {
    shmap::DynamicMap d = shmap::DynamicMap::open(name, oo);
    if (!(d.key_type() == recorded.key && d.value_type() == recorded.value)) replaced();
    o.backend = std::make_shared<Backend>(std::move(d));
  } else {
    shmap::StringMap sm = shmap::StringMap::open_any(name, oo);
    if (!(sm.value_type() == recorded.value)) replaced();
    o.backend = std::make_shared<Backend>(std::move(sm));
  }
  return o;
}

Opened create_new(const std::string& name, KeyKind key, ValKind value,
                  const shmap::Options& options) {
  Opened o{nullptr, key, value, true};
  const auto layout = layout_for(key, value);
  if (key == KeyKind::u64 && value == ValKind::u64) {
    o.backend = std::make_shared<Backend>(shmap::Map::create(name, options));
  } else if (!string_keyed(key, value)) {
    o.backend = std::make_shared<Backend>(shmap::DynamicMap::create(name, options, layout));
  } else {
    // StringMap::create records string -> string; another layout is made through DynamicMap,
    // closed (a map with max_handles = 1 has one slot), and attached again as a StringMap.
    (void)shmap::DynamicMap::create(name, options, layout);
    shmap::StringMap sm = shmap::StringMap::open_any(name);
    if (!(sm.value_type() == layout.value)) {
      raise_error(shmap::Errc::layout_mismatch,
                  "map '" + name + "' was replaced by another while being created");
    }
    o.backend = std::make_shared<Backend>(std::move(sm));
  }
  return o;
}

Opened open_map(const std::string& name, Mode mode, std::optional<KeyKind> key,
                std::optional<ValKind> value, bool read_only, const shmap::Options& options) {
  if (mode == Mode::open) return open_existing(name, key, value, read_only);
  if (read_only) throw py::value_error("readonly=True opens an existing map only");
  const KeyKind k = key.value_or(KeyKind::u64);
  const ValKind v = value.value_or(ValKind::u64);
  if (mode == Mode::create) return create_new(name, k, v, options);
  // open_or_create: open; absent, create; created meanwhile by another process, open it.
  for (int attempt = 0;; ++attempt) {
    try {
      return open_existing(name, key, value, false);
    } catch (const shmap::Error& e) {
      if (e.code() != shmap::Errc::not_found || attempt == 3) throw;
    }
    try {
      return create_new(name, k, v, options);
    } catch (const shmap::Error& e) {
      if (e.code() != shmap::Errc::already_exists || attempt == 3) throw;
    }
  }
}

// ---- _Core ---------------------------------------------------------------------------------

class Core {
 public:
  Core(const std::string& name, const std::string& mode, std::optional<std::string> key,
       std::optional<std::string> value, bool read_only, std::size_t initial_capacity,
       std::size_t max_handles, unsigned permissions, std::size_t max_bytes)
      : name_(name), read_only_(read_only) {
    Mode m = Mode::open;
    if (mode == "create") {
      m = Mode::create;
    } else if (mode == "open_or_create") {
      m = Mode::open_or_create;
    } else if (mode != "open") {
      throw py::value_error("mode must be open, create or open_or_create");
    }
    std::optional<KeyKind> k;
    std::optional<ValKind> v;
    if (key) k = parse_key(*key);
    if (value) v = parse_value(*value);
    shmap::Options o;
    o.initial_capacity = initial_capacity;
    o.max_handles = max_handles;
    o.mode = permissions;
    o.max_bytes = max_bytes;
    Opened op = open_map(name, m, k, v, read_only, o);
    backend_ = std::move(op.backend);
    key_ = op.key;
    value_ = op.value;
    created_ = op.created;
    generation_ = g_fork_generation.load(std::memory_order_relaxed);
  }

  const std::string& name() const { return name_; }
  std::string key_type() const { return key_name(key_); }
  std::string value_type() const { return value_name(value_); }
  bool read_only() const { return read_only_; }
  bool created() const { return created_; }
  bool closed() const { return backend_ == nullptr; }
  void close() {
    guard();
    backend_.reset();
  }

  // -- single operations

  py::object getitem(py::handle k) {
    py::object v = find(k);
    if (v.ptr() == nullptr) key_error(k);
    return v;
  }
  py::object get(py::handle k, py::object dflt) {
    py::object v = find(k);
    return v.ptr() == nullptr ? dflt : v;
  }
  bool contains(py::handle k) {
    Backend& b = backend();  // as find(): no Python code runs while b is in use
    if (auto* m = std::get_if<shmap::Map>(&b)) return m->contains(to_u64(k, "key"));
    if (auto* d = std::get_if<shmap::DynamicMap>(&b)) {
      double out = 0;
      return d->find(to_u64(k, "key"), &out);
    }
    std::uint64_t w = 0;
    return std::get<shmap::StringMap>(b).contains(key_bytes(key_, k, &w));
  }
  void setitem(py::handle k, py::handle v) { write(k, v, true); }
  bool insert(py::handle k, py::handle v) { return write(k, v, false); }
  void delitem(py::handle k) {
    if (!erase(k)) key_error(k);
  }
  bool erase(py::handle k) {
    Backend& b = backend();  // as find(): no Python code runs while b is in use
    if (auto* m = std::get_if<shmap::Map>(&b)) return m->erase(to_u64(k, "key"));
    if (auto* d = std::get_if<shmap::DynamicMap>(&b)) return d->erase(to_u64(k, "key"));
    std::uint64_t w = 0;
    return std::get<shmap::StringMap>(b).erase(key_bytes(key_, k, &w));
  }
  /// dict.pop: find, then erase (two steps: a write between them is not seen).
  py::object pop(py::handle k, py::object dflt, bool has_default) {
    for (;;) {
      py::object v = find(k);
      if (v.ptr() == nullptr) {
        if (!has_default) key_error(k);
        return dflt;
      }
      if (erase(k)) return v;
    }
  }
  /// dict.setdefault, atomically: insert if absent, else the present value. The lookup comes
  /// first, as dict's: a present key's value is returned whatever the default is (None where
  /// the map's values cannot be None).
  py::object setdefault(py::handle k, py::handle dflt) {
    for (;;) {
      py::object v = find(k);
      if (v.ptr() != nullptr) return v;
      if (write(k, dflt, false)) return py::reinterpret_borrow<py::object>(dflt);
    }
  }
  bool compare_exchange(py::handle k, py::handle expected, py::handle desired) {
    const auto hold = shared_backend();
    Backend& b = *hold;
    if (auto* m = std::get_if<shmap::Map>(&b)) {
      return m->compare_exchange(to_u64(k, "key"), to_u64(expected, "value"),
                                 to_u64(desired, "value"));
    }
    if (auto* d = std::get_if<shmap::DynamicMap>(&b)) {
      const double e = to_f64(expected), n = to_f64(desired);
      return d->compare_exchange(to_u64(k, "key"), &e, &n);
    }
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    std::string e, n;
    value_bytes(value_, expected, &e);
    value_bytes(value_, desired, &n);
    return std::get<shmap::StringMap>(b).compare_exchange(key, e, n);
  }
  /// Adds delta, returns the previous value; an absent key counts as 0.
  py::object fetch_add(py::handle k, py::handle delta) {
    const auto hold = shared_backend();
    Backend& b = *hold;
    if (auto* m = std::get_if<shmap::Map>(&b)) {
      return py::int_(m->fetch_add(to_u64(k, "key"), to_delta(delta)));
    }
    if (value_ == ValKind::f64) {
      const double add = to_f64(delta);
      double before = 0;
      auto edit = [&](double& v) {
        before = v;
        v += add;
      };
      if (auto* d = std::get_if<shmap::DynamicMap>(&b)) {
        struct Ctx {
          decltype(edit)& f;
        } ctx{edit};
        const std::uint64_t key = to_u64(k, "key");
        d->upsert(
            key,
            [](void* c, void* out) {
              double v = 0;
              static_cast<Ctx*>(c)->f(v);
              std::memcpy(out, &v, 8);
            },
            [](void* c, void* value) {
              double v;
              std::memcpy(&v, value, 8);
              static_cast<Ctx*>(c)->f(v);
              std::memcpy(value, &v, 8);
              return true;
            },
            &ctx);
        return py::float_(before);
      }
      std::uint64_t w = 0;
      const auto key = key_bytes(key_, k, &w);
      string_upsert8<double>(std::get<shmap::StringMap>(b), key, edit);
      return py::float_(before);
    }
    if (value_ == ValKind::u64) {
      const std::uint64_t add = to_delta(delta);
      std::uint64_t before = 0;
      auto edit = [&](std::uint64_t& v) {
        before = v;
        v += add;
      };
      std::uint64_t w = 0;
      const auto key = key_bytes(key_, k, &w);
      string_upsert8<std::uint64_t>(std::get<shmap::StringMap>(b), key, edit);
      return py::int_(before);
    }
    throw py::type_error("fetch_add needs a map with int or float values; this one holds " +
                         value_type());
  }

  /// Atomic read-modify-write: the value becomes fn(value) if no other write came in between
  /// (else fn runs again on the newer value). Absent key: KeyError, or with a default, the key
  /// is inserted with fn(default). Returns the value written.
  py::object update(py::handle k, py::function fn, py::object dflt, bool has_default) {
    const auto hold = shared_backend();
    Backend& b = *hold;
    InCallback busy(this);
    if (auto* m = std::get_if<shmap::Map>(&b)) {
      const std::uint64_t key = to_u64(k, "key");
      for (;;) {
        const auto cur = m->find(key);
        if (!cur) {
          if (!has_default) key_error(k);
          py::object n = fn(dflt);
          if (m->insert(key, to_u64(n, "value"))) return n;
          continue;
        }
        py::object n = fn(py::int_(*cur));
        if (m->compare_exchange(key, *cur, to_u64(n, "value"))) return n;
      }
    }
    // The other maps: their update/upsert call us back with a copy of the value.
    std::exception_ptr failure;
    py::object result;
    std::string scratch;
    auto apply = [&](std::string_view old, std::string* out) -> bool {
      try {
        py::object n = fn(value_object(value_, old));
        value_bytes(value_, n, out);
        result = std::move(n);
        return true;
      } catch (...) {
        failure = std::current_exception();  // raised again once C++ has returned
        return false;                        // leave the value as it is
      }
    };
    std::string initial;  // fn(default), computed ahead: fn may run more than once anyway
    py::object initial_object;
    if (has_default) {
      initial_object = fn(dflt);
      value_bytes(value_, initial_object, &initial);
    }
    bool inserted = false, present = false;
    if (auto* d = std::get_if<shmap::DynamicMap>(&b)) {
      struct Ctx {
        decltype(apply)& f;
        std::string& initial;
        std::string& scratch;
      } ctx{apply, initial, scratch};
      const std::uint64_t key = to_u64(k, "key");
      auto edit = [](void* c, void* value) {
        auto& x = *static_cast<Ctx*>(c);
        if (!x.f(std::string_view(static_cast<const char*>(value), 8), &x.scratch)) return false;
        std::memcpy(value, x.scratch.data(), 8);
        return true;
      };
      if (has_default) {
        inserted = d->upsert(
            key,
            [](void* c, void* out) { std::memcpy(out, static_cast<Ctx*>(c)->initial.data(), 8); },
            edit, &ctx);
        present = true;
      } else {
        present = d->update(key, edit, &ctx);
      }
    } else {
      auto& s = std::get<shmap::StringMap>(b);
      std::uint64_t w = 0;
      const auto key = key_bytes(key_, k, &w);
      auto edit = [&](std::string& v) {
        if (!apply(v, &scratch)) return false;
        v.swap(scratch);
        return true;
      };
      if (has_default) {
        inserted = s.upsert(
            key, [&] { return std::string_view(initial); }, edit);
        present = true;
      } else {
        present = s.update(key, edit);
      }
    }
    if (failure) std::rethrow_exception(failure);
    if (!present) key_error(k);
    return inserted ? initial_object : result;  // what the write that stuck wrote
  }

  std::size_t len() {
    return std::visit([](auto& m) { return m.size(); }, backend());
  }

  // -- walks (weakly consistent, as for_each)

  /// Some key of the map (the first a walk meets), or None when it is empty: popitem's, which
  /// would otherwise turn every key into a Python object to pop one.
  py::object first_key() {
    auto hold = shared_backend();
    struct Found {};  // ends the walk at its first entry (the walks' pins are RAII guards)
    std::optional<std::uint64_t> word;
    std::optional<std::string> bytes;
    {
      py::gil_scoped_release release;
      try {
        if (auto* m = std::get_if<shmap::Map>(hold.get())) {
          m->for_each([&](std::uint64_t k, std::uint64_t) {
            word = k;
            throw Found{};
          });
        } else if (auto* d = std::get_if<shmap::DynamicMap>(hold.get())) {
          d->for_each(
              [](void* c, std::uint64_t k, const void*) {
                *static_cast<std::optional<std::uint64_t>*>(c) = k;
                throw Found{};
              },
              &word);
        } else {
          std::get<shmap::StringMap>(*hold).for_each([&](std::string_view k, std::string_view) {
            bytes.emplace(k);
            throw Found{};
          });
        }
      } catch (const Found&) {
      }
    }
    if (word) return py::int_(*word);
    if (bytes) return key_object(key_, *bytes);
    return py::none();
  }

  py::list keys() { return walk(true, false); }
  py::list values() { return walk(false, true); }
  py::list items() { return walk(true, true); }

  // -- batched calls (int keys with int or float values)

  /// (values, found) for every key; into the arrays given (reused by a loop over batches: no
  /// allocation, no page faults on fresh memory), else into new ones.
  py::tuple find_many(py::object keys_in, py::object values_in, py::object found_in) {
    auto hold = shared_backend();
    const U64Array keys = u64_array(keys_in, "keys");
    const auto n = static_cast<std::size_t>(keys.shape(0));
    auto found = out_array<bool>(found_in, n, "found", "bool");
    const std::uint64_t* in = keys.data();
    bool* f = found.mutable_data();
    if (auto* m = std::get_if<shmap::Map>(hold.get())) {
      auto values = out_array<std::uint64_t>(values_in, n, "values", "uint64");
      std::uint64_t* out = values.mutable_data();
      {
        py::gil_scoped_release release;
        // Map::find_many's results are optionals: 1,024 at a time through a buffer that
        // stays in L1, then split into the two arrays.
        constexpr std::size_t kChunk = 1024;
        std::optional<std::uint64_t> buf[kChunk];
        for (std::size_t i = 0; i < n; i += kChunk) {
          const std::size_t c = std::min(kChunk, n - i);
          m->find_many(std::span(in + i, c), std::span(buf, c));
          for (std::size_t j = 0; j < c; ++j) {
            f[i + j] = buf[j].has_value();
            out[i + j] = buf[j].value_or(0);
          }
        }
      }
      return py::make_tuple(values, found);
    }
    if (auto* d = std::get_if<shmap::DynamicMap>(hold.get())) {
      auto values = out_array<double>(values_in, n, "values", "float64");
      double* out = values.mutable_data();
      {
        py::gil_scoped_release release;
        for (std::size_t i = 0; i < n; ++i) {
          double v = 0;
          f[i] = d->find(in[i], &v);
          out[i] = f[i] ? v : 0.0;
        }
      }
      return py::make_tuple(values, found);
    }
    throw py::type_error("find_many takes maps with int keys and int or float values");
  }

  /// Sets keys[i] -> values[i] (overwrite) or inserts where absent; returns how many keys were
  /// absent before.
  std::size_t insert_many(py::object keys_in, py::object values_in, bool overwrite) {
    auto hold = shared_backend();
    if (read_only_) raise_error(shmap::Errc::permission_denied, "map '" + name_ + "' is read-only");
    const U64Array keys = u64_array(keys_in, "keys");
    const auto n = static_cast<std::size_t>(keys.shape(0));
    const std::uint64_t* k = keys.data();
    std::size_t added = 0;
    auto check_len = [&](const py::array& v) {
      if (v.ndim() != 1 || static_cast<std::size_t>(v.shape(0)) != n) {
        throw py::value_error("values must be a one-dimensional array as long as keys");
      }
    };
    if (auto* m = std::get_if<shmap::Map>(hold.get())) {
      const U64Array values = u64_array(values_in, "values");
      check_len(values);
      const std::uint64_t* v = values.data();
      py::gil_scoped_release release;
      for (std::size_t i = 0; i < n; ++i) {
        added += overwrite ? m->insert_or_assign(k[i], v[i]) : m->insert(k[i], v[i]);
      }
      return added;
    }
    if (auto* d = std::get_if<shmap::DynamicMap>(hold.get())) {
      auto values =
          py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(values_in);
      if (!values) throw py::type_error("values must be an array of float64");
      check_len(values);
      const double* v = values.data();
      py::gil_scoped_release release;
      for (std::size_t i = 0; i < n; ++i) {
        added += overwrite ? d->insert_or_assign(k[i], &v[i]) : d->insert(k[i], &v[i]);
      }
      return added;
    }
    throw py::type_error("insert_many takes maps with int keys and int or float values");
  }

  /// Adds deltas[i] to keys[i]'s value (mod 2**64; absent counts as 0), in order, without the
  /// GIL; returns the previous values. Each addition is atomic on its own (int -> int maps).
  py::array_t<std::uint64_t> fetch_add_many(py::object keys_in, py::object deltas_in) {
    auto hold = shared_backend();
    auto* m = std::get_if<shmap::Map>(hold.get());
    if (m == nullptr) throw py::type_error("fetch_add_many takes maps of int -> int");
    // Deltas may be negative (mod 2**64, as fetch_add's); keys may not (as m[k]'s).
    const U64Array keys = u64_array(keys_in, "keys");
    const U64Array deltas = u64_array(deltas_in, "deltas", true);
    if (keys.ndim() != 1 || deltas.ndim() != 1 || keys.shape(0) != deltas.shape(0)) {
      throw py::value_error("keys and deltas must be one-dimensional arrays of one length");
    }
    const auto n = static_cast<std::size_t>(keys.shape(0));
    py::array_t<std::uint64_t> before(static_cast<py::ssize_t>(n));
    const std::uint64_t* k = keys.data();
    const std::uint64_t* d = deltas.data();
    std::uint64_t* out = before.mutable_data();
    {
      py::gil_scoped_release release;
      for (std::size_t i = 0; i < n; ++i) out[i] = m->fetch_add(k[i], d[i]);
    }
    return before;
  }

  // -- the map as a whole

  py::dict stats() {
    auto hold = shared_backend();
    shmap::Stats s;
    {
      py::gil_scoped_release release;
      s = std::visit([](auto& m) { return m.stats(); }, *hold);
    }
    py::dict d;
    d["size"] = s.size;
    d["capacity"] = s.capacity;
    d["tables"] = s.tables;
    d["handles_in_use"] = s.handles_in_use;
    d["max_handles"] = s.max_handles;
    d["segment_bytes"] = s.segment_bytes;
    d["allocated_bytes"] = s.allocated_bytes;
    d["used_buckets"] = s.used_buckets;
    d["migration_total"] = s.migration_total;
    d["migration_done"] = s.migration_done;
    d["retired_pending"] = s.retired_pending;
    d["global_epoch"] = s.global_epoch;
    d["resizes"] = s.resizes;
    d["tables_freed"] = s.tables_freed;
    d["format_version"] = s.format_version;
    d["initial_capacity"] = s.options.initial_capacity;
    d["max_bytes"] = s.options.max_bytes;
    d["mode"] = s.options.mode;
    return d;
  }
  py::list readers() {
    auto hold = shared_backend();
    std::vector<shmap::ReaderInfo> r = std::visit([](auto& m) { return m.readers(); }, *hold);
    py::list out;
    for (const auto& x : r) {
      py::dict d;
      d["slot"] = x.slot;
      d["pid"] = x.pid;
      d["alive"] = x.alive;
      d["self"] = x.self;
      d["pinned_lanes"] = x.pinned_lanes;
      d["oldest_pinned_epoch"] = x.oldest_pinned_epoch;
      d["opened_at_unix_ns"] = x.opened_at_unix_ns;
      out.append(d);
    }
    return out;
  }
  py::dict check() {
    auto hold = shared_backend();
    shmap::CheckReport r;
    shmap::RecordStats rs;
    bool records = false;
    {
      py::gil_scoped_release release;
      r = std::visit(
          [&](auto& m) {
            if constexpr (std::is_same_v<std::decay_t<decltype(m)>, shmap::Map>) {
              return m.check();
            } else {
              records = true;
              return m.check(&rs);
            }
          },
          *hold);
    }
    py::dict d;
    d["ok"] = r.ok;
    d["problems"] = r.problems;
    d["notes"] = r.notes;
    d["live_entries"] = r.live_entries;
    if (records) {
      // As `shmap check --json` states them: values in records, and short entries that live
      // in their buckets (no record).
      py::dict x;
      x["slabs"] = rs.slabs;
      x["live"] = rs.live;
      x["free"] = rs.free;
      x["retired"] = rs.retired;
      x["leaked"] = rs.leaked;
      x["inline_entries"] = rs.inline_entries;
      d["records"] = x;
    }
    return d;
  }
  void compact() {
    auto hold = shared_backend();
    py::gil_scoped_release release;
    std::visit([](auto& m) { m.compact(); }, *hold);
  }
  void dump(const std::string& path, bool json, bool point_in_time) {
    auto hold = shared_backend();
    shmap::DumpOptions o;
    o.json = json;
    o.point_in_time = point_in_time;
    py::gil_scoped_release release;
    if (auto* m = std::get_if<shmap::Map>(hold.get())) {
      m->dump(path, o);
    } else if (auto* d = std::get_if<shmap::DynamicMap>(hold.get())) {
      d->dump(path, o);
    } else {
      std::get<shmap::StringMap>(*hold).dump(path, o);  // binary only for now (else says so)
    }
  }

 private:
  /// Marks an update() running on this map in this Python thread: its fn must not use this
  /// map (it may run inside the C++ update, where this map's operations are not allowed).
  /// The thread is its PyThreadState (a read of the runtime's current state; a thread_local
  /// in an extension module costs a __tls_get_addr call on every operation).
  struct InCallback {
    explicit InCallback(Core* c) : core_(c), previous_(c->updating_) {
      c->updating_ = PyThreadState_Get();
    }
    ~InCallback() { core_->updating_ = previous_; }
    InCallback(const InCallback&) = delete;
    InCallback& operator=(const InCallback&) = delete;
    Core* core_;
    PyThreadState* previous_;
  };

  /// An output array for a batched call: `given` if it is one (a writeable, C-contiguous,
  /// one-dimensional array of n T's: written in place, never a converted copy), else a new one.
  template <class T>
  static py::array_t<T> out_array(py::handle given, std::size_t n, const char* what,
                                  const char* dtype) {
    if (given.is_none()) return py::array_t<T>(static_cast<py::ssize_t>(n));
    if (!py::array_t<T, py::array::c_style>::check_(given)) {
      throw py::type_error(std::string(what) + " must be a C-contiguous numpy array of " + dtype +
                           " (it is written in place)");
    }
    auto a = py::reinterpret_borrow<py::array_t<T>>(given);
    if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != n) {
      throw py::value_error(std::string(what) + " must be a one-dimensional array as long as keys");
    }
    if (!a.writeable()) throw py::value_error(std::string(what) + " is read-only");
    return a;
  }

  template <class T, class F>
  static void string_upsert8(shmap::StringMap& s, std::string_view key, F& edit) {
    s.upsert(
        key,
        [&] {
          T v{};
          edit(v);
          return std::string(reinterpret_cast<const char*>(&v), sizeof v);
        },
        [&](std::string& b) {
          if (b.size() != sizeof(T)) return false;
          T v;
          std::memcpy(&v, b.data(), sizeof v);
          edit(v);
          b.assign(reinterpret_cast<const char*>(&v), sizeof v);
          return true;
        });
  }

  void guard() const {
    if (updating_ != nullptr && updating_ == PyThreadState_Get()) [[unlikely]] {
      throw py::value_error("a function given to shmap.Map.update must not use the map itself");
    }
  }

  Backend& backend() {
    guard();
    if (backend_ == nullptr) {
      throw py::value_error("operation on a closed shmap.Map ('" + name_ + "')");
    }
    if (generation_ != g_fork_generation.load(std::memory_order_relaxed)) [[unlikely]] {
      reopen_after_fork();
    }
    return *backend_;
  }
  std::shared_ptr<Backend> shared_backend() {
    backend();
    return backend_;
  }

  void reopen_after_fork() {
    // The inherited attachment is the parent's: closing it here unmaps it and leaves the
    // parent's handle slot alone (MapImpl's destructor checks the owner's pid).
    backend_.reset();
    try {
      Opened op = open_existing(name_, key_, value_, read_only_);
      backend_ = std::move(op.backend);
      generation_ = g_fork_generation.load(std::memory_order_relaxed);
    } catch (const shmap::Error& e) {
      raise_error(e.code(),
                  std::string("shmap.Map '") + name_ +
                      "' was opened before fork(); reopening it in the child failed: " + e.what());
    }
  }

  py::object find(py::handle k) {
    // A reference, not a shared_ptr copy (two atomic RMWs): nothing below runs Python code
    // while b is in use (the key's conversion calls none; a pickle is unpickled after), so
    // close() cannot come in between.
    Backend& b = backend();
    if (auto* m = std::get_if<shmap::Map>(&b)) {
      std::uint64_t v = 0;  // find(k, v): always inlined, no std::optional (DESIGN.md §4)
      if (!m->find(to_u64(k, "key"), v)) return py::object();
      return py::int_(v);
    }
    if (auto* d = std::get_if<shmap::DynamicMap>(&b)) {
      double out = 0;
      if (!d->find(to_u64(k, "key"), &out)) return py::object();
      return py::float_(out);
    }
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    // The Python object is made from the bytes where they lie in the segment (under the read
    // pin: no copy into a std::string first). A pickle's bytes are copied there too; it is
    // unpickled after, unpinned: pickle.loads runs Python code, which may use this map.
    PyObject* made = nullptr;
    if (!std::get<shmap::StringMap>(b).visit_value(
            key, [&](std::string_view v) { made = new_value_ref(value_, v); })) {
      return py::object();
    }
    if (made == nullptr) throw py::error_already_set();
    py::object got = py::reinterpret_steal<py::object>(made);
    if (value_ != ValKind::pickle) return got;
    return unpickle(got);
  }

  /// overwrite: insert_or_assign, else insert. Returns whether the key was absent.
  bool write(py::handle k, py::handle v, bool overwrite) {
    const auto hold = shared_backend();
    Backend& b = *hold;
    if (auto* m = std::get_if<shmap::Map>(&b)) {
      const std::uint64_t key = to_u64(k, "key"), value = to_u64(v, "value");
      return overwrite ? m->insert_or_assign(key, value) : m->insert(key, value);
    }
    if (auto* d = std::get_if<shmap::DynamicMap>(&b)) {
      const std::uint64_t key = to_u64(k, "key");
      const double value = to_f64(v);
      return overwrite ? d->insert_or_assign(key, &value) : d->insert(key, &value);
    }
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    std::string value;
    value_bytes(value_, v, &value);
    auto& s = std::get<shmap::StringMap>(b);
    return overwrite ? s.insert_or_assign(key, value) : s.insert(key, value);
  }

  py::list walk(bool want_keys, bool want_values) {
    auto hold = shared_backend();
    py::list out;
    auto emit = [&](py::object k, py::object v) {
      if (want_keys && want_values) {
        out.append(py::make_tuple(std::move(k), std::move(v)));
      } else {
        out.append(want_keys ? std::move(k) : std::move(v));
      }
    };
    if (auto* m = std::get_if<shmap::Map>(hold.get())) {
      std::vector<std::pair<std::uint64_t, std::uint64_t>> all;
      {
        py::gil_scoped_release release;
        m->for_each([&](std::uint64_t k, std::uint64_t v) { all.emplace_back(k, v); });
      }
      for (const auto& [k, v] : all) emit(py::int_(k), py::int_(v));
      return out;
    }
    if (auto* d = std::get_if<shmap::DynamicMap>(hold.get())) {
      std::vector<std::pair<std::uint64_t, double>> all;
      {
        py::gil_scoped_release release;
        d->for_each(
            [](void* c, std::uint64_t k, const void* v) {
              double x;
              std::memcpy(&x, v, 8);
              static_cast<decltype(all)*>(c)->emplace_back(k, x);
            },
            &all);
      }
      for (const auto& [k, v] : all) emit(py::int_(k), py::float_(v));
      return out;
    }
    auto& s = std::get<shmap::StringMap>(*hold);
    std::vector<std::pair<std::string, std::string>> all;
    {
      py::gil_scoped_release release;
      s.for_each([&](std::string_view k, std::string_view v) {
        all.emplace_back(std::string(k), want_values ? std::string(v) : std::string());
      });
    }
    for (const auto& [k, v] : all) {
      emit(want_keys ? key_object(key_, k) : py::object(py::none()),
           want_values ? value_object(value_, v) : py::object(py::none()));
    }
    return out;
  }

  std::string name_;
  bool read_only_ = false;
  bool created_ = false;
  KeyKind key_ = KeyKind::u64;
  ValKind value_ = ValKind::u64;
  std::uint64_t generation_ = 0;
  std::shared_ptr<Backend> backend_;
  PyThreadState* updating_ = nullptr;  // InCallback
};

// ---- _MultiCore: a StringMultimap ------------------------------------------------------------
//
// Keys int/bytes/str and values bytes/str/pickle, recorded as for a string map (layout_for),
// with the segment's multimap kind. Forks are handled as _Core's.

class MultiCore {
 public:
  MultiCore(const std::string& name, const std::string& mode, std::optional<std::string> key,
            std::optional<std::string> value, bool read_only, std::size_t initial_capacity,
            std::size_t max_handles, unsigned permissions, std::size_t max_bytes)
      : name_(name), read_only_(read_only) {
    std::optional<KeyKind> k;
    std::optional<ValKind> v;
    if (key) k = parse_key(*key);
    if (value) v = parse_value(*value);
    if (v && (*v == ValKind::u64 || *v == ValKind::f64)) {
      throw py::value_error("a Multimap's values are bytes, str or \"pickle\"");
    }
    shmap::Options o;
    o.initial_capacity = initial_capacity;
    o.max_handles = max_handles;
    o.mode = permissions;
    o.max_bytes = max_bytes;
    if (mode != "open" && read_only) {
      throw py::value_error("readonly=True opens an existing map only");
    }
    if (mode == "open") {
      open_existing(k, v);
    } else if (mode == "create") {
      create_new(k.value_or(KeyKind::bytes), v.value_or(ValKind::bytes), o);
    } else if (mode == "open_or_create") {
      for (int attempt = 0;; ++attempt) {
        try {
          open_existing(k, v);
          break;
        } catch (const shmap::Error& e) {
          if (e.code() != shmap::Errc::not_found || attempt == 3) throw;
        }
        try {
          create_new(k.value_or(KeyKind::bytes), v.value_or(ValKind::bytes), o);
          break;
        } catch (const shmap::Error& e) {
          if (e.code() != shmap::Errc::already_exists || attempt == 3) throw;
        }
      }
    } else {
      throw py::value_error("mode must be open, create or open_or_create");
    }
    generation_ = g_fork_generation.load(std::memory_order_relaxed);
  }

  const std::string& name() const { return name_; }
  std::string key_type() const { return key_name(key_); }
  std::string value_type() const { return value_name(value_); }
  bool read_only() const { return read_only_; }
  bool created() const { return created_; }
  bool closed() const { return m_ == nullptr; }
  void close() { m_.reset(); }

  void add(py::handle k, py::handle v) {
    auto m = get();
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    std::string value;
    value_bytes(value_, v, &value);
    m->insert(key, value);
  }
  bool add_unique(py::handle k, py::handle v) {
    auto m = get();
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    std::string value;
    value_bytes(value_, v, &value);
    return m->insert_unique(key, value);
  }
  py::list values_of(py::handle k) {
    auto m = get();
    std::uint64_t w = 0;
    const std::vector<std::string> all = m->find(key_bytes(key_, k, &w));
    py::list out;
    for (const auto& v : all) out.append(value_object(value_, v));
    return out;
  }
  std::size_t count(py::handle k) {
    auto m = get();
    std::uint64_t w = 0;
    return m->count(key_bytes(key_, k, &w));
  }
  bool contains(py::handle k) { return count(k) != 0; }
  bool has(py::handle k, py::handle v) {
    auto m = get();
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    std::string value;
    value_bytes(value_, v, &value);
    return m->contains(key, value);
  }
  bool discard(py::handle k, py::handle v) {
    auto m = get();
    std::uint64_t w = 0;
    const auto key = key_bytes(key_, k, &w);
    std::string value;
    value_bytes(value_, v, &value);
    return m->erase(key, value);
  }
  std::size_t discard_all(py::handle k) {
    auto m = get();
    std::uint64_t w = 0;
    return m->erase(key_bytes(key_, k, &w));
  }
  std::size_t len() { return get()->size(); }
  py::list items(bool want_values) {
    auto m = get();
    std::vector<std::pair<std::string, std::string>> all;
    {
      py::gil_scoped_release release;
      m->for_each([&](std::string_view k, std::string_view v) {
        all.emplace_back(std::string(k), want_values ? std::string(v) : std::string());
      });
    }
    py::list out;
    if (!want_values) {  // each key once (a key's values come together)
      const std::string* last = nullptr;
      for (const auto& kv : all) {
        if (last == nullptr || *last != kv.first) out.append(key_object(key_, kv.first));
        last = &kv.first;
      }
      return out;
    }
    for (const auto& [k, v] : all) {
      out.append(py::make_tuple(key_object(key_, k), value_object(value_, v)));
    }
    return out;
  }
  py::dict stats() {
    auto m = get();
    shmap::Stats s;
    {
      py::gil_scoped_release release;
      s = m->stats();
    }
    py::dict d;
    d["size"] = s.size;
    d["capacity"] = s.capacity;
    d["handles_in_use"] = s.handles_in_use;
    d["max_handles"] = s.max_handles;
    d["segment_bytes"] = s.segment_bytes;
    return d;
  }
  py::dict check() {
    auto m = get();
    shmap::CheckReport r;
    {
      py::gil_scoped_release release;
      r = m->check(nullptr);
    }
    py::dict d;
    d["ok"] = r.ok;
    d["problems"] = r.problems;
    d["notes"] = r.notes;
    d["live_entries"] = r.live_entries;
    return d;
  }
  void compact() {
    auto m = get();
    py::gil_scoped_release release;
    m->compact();
  }

 private:
  std::shared_ptr<shmap::StringMultimap> get() {
    if (m_ == nullptr) {
      throw py::value_error("operation on a closed shmap.Multimap ('" + name_ + "')");
    }
    if (generation_ != g_fork_generation.load(std::memory_order_relaxed)) [[unlikely]] {
      m_.reset();  // the parent's attachment: closed here, its slot left alone
      try {
        open_existing(key_, value_);
      } catch (const shmap::Error& e) {
        raise_error(e.code(), std::string("shmap.Multimap '") + name_ +
                                  "' was opened before fork(); reopening it in the child "
                                  "failed: " +
                                  e.what());
      }
      generation_ = g_fork_generation.load(std::memory_order_relaxed);
    }
    return m_;
  }

  void open_existing(std::optional<KeyKind> key, std::optional<ValKind> value) {
    shmap::DynamicMap::Layout recorded;
    bool multi = false;
    {
      shmap::OpenOptions probe_options;
      probe_options.read_only = true;
      const shmap::DynamicMap probe = shmap::DynamicMap::open(name_, probe_options);
      recorded = {probe.key_type(), probe.value_type()};
      multi = probe.is_multimap();
    }
    KeyKind k{};
    ValKind v{};
    if (!multi || !kinds_of(recorded, &k, &v)) {
      raise_error(shmap::Errc::layout_mismatch,
                  "map '" + name_ + "' holds " + describe(recorded) +
                      (multi ? ", which no Python multimap holds"
                             : ", not a multimap: open it with shmap.Map"));
    }
    if ((key && *key != k) || (value && *value != v)) {
      raise_error(shmap::Errc::layout_mismatch, "multimap '" + name_ + "' holds " + key_name(k) +
                                                    " -> " + value_name(v) + "; opened as " +
                                                    key_name(key.value_or(k)) + " -> " +
                                                    value_name(value.value_or(v)));
    }
    shmap::OpenOptions oo;
    oo.read_only = read_only_;
    m_ = std::make_shared<shmap::StringMultimap>(shmap::StringMultimap::open(name_, oo));
    key_ = k;
    value_ = v;
  }

  void create_new(KeyKind k, ValKind v, const shmap::Options& o) {
    auto layout = layout_for(k, v);
    layout.multimap = true;
    (void)shmap::DynamicMap::create(name_, o, layout);  // closed: max_handles may be 1
    m_ = std::make_shared<shmap::StringMultimap>(shmap::StringMultimap::open(name_));
    key_ = k;
    value_ = v;
    created_ = true;
  }

  std::string name_;
  bool read_only_ = false;
  bool created_ = false;
  KeyKind key_ = KeyKind::bytes;
  ValKind value_ = ValKind::bytes;
  std::uint64_t generation_ = 0;
  std::shared_ptr<shmap::StringMultimap> m_;
};

// ---- The fast path -------------------------------------------------------------------------
//
// pybind11's dispatcher costs a few hundred nanoseconds per call, as much as the lookup itself.
// The hottest methods are therefore also plain CPython methods (PyMethodDef) put into the
// class's dict in place of pybind11's: the interpreter calls them directly. They reach the
// Core through pybind11's instance layout (a Python subclass of one pybind11 class keeps the
// simple layout: the value pointer first), and a method descriptor only ever passes instances
// of its class as self.

/// Sets the Python error for the exception being handled (as pybind11's translators would).
void set_python_error() {
  try {
    throw;
  } catch (const shmap::Error& e) {
    translate(e);
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "shmap: unknown C++ exception");
  }
}

Core* core_of(PyObject* self) {
  auto* inst = reinterpret_cast<py::detail::instance*>(self);
  if (inst->simple_layout && inst->simple_value_holder[0] != nullptr) {
    return static_cast<Core*>(inst->simple_value_holder[0]);
  }
  return py::handle(self).cast<Core*>();  // not initialised: pybind11 says so
}

template <class F>
PyObject* guarded(F&& f) noexcept {
  try {
    return f();
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

PyObject* to_bool(bool b) { return PyBool_FromLong(b ? 1 : 0); }

bool want_args(const char* name, Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi) {
  if (n >= lo && n <= hi) return true;
  PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", name, lo, hi, n);
  return false;
}

PyObject* fast_getitem(PyObject* self, PyObject* k) {
  return guarded([&] { return core_of(self)->getitem(k).release().ptr(); });
}
PyObject* fast_contains(PyObject* self, PyObject* k) {
  return guarded([&] { return to_bool(core_of(self)->contains(k)); });
}
PyObject* fast_delitem(PyObject* self, PyObject* k) {
  return guarded([&] {
    core_of(self)->delitem(k);
    Py_RETURN_NONE;
  });
}
PyObject* fast_discard(PyObject* self, PyObject* k) {
  return guarded([&] { return to_bool(core_of(self)->erase(k)); });
}
PyObject* fast_setitem(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  if (!want_args("__setitem__", n, 2, 2)) return nullptr;
  return guarded([&] {
    core_of(self)->setitem(a[0], a[1]);
    Py_RETURN_NONE;
  });
}
PyObject* fast_insert(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  if (!want_args("insert", n, 2, 2)) return nullptr;
  return guarded([&] { return to_bool(core_of(self)->insert(a[0], a[1])); });
}
PyObject* fast_get(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  if (!want_args("get", n, 1, 2)) return nullptr;
  return guarded([&] {
    return core_of(self)
        ->get(a[0], py::reinterpret_borrow<py::object>(n == 2 ? a[1] : Py_None))
        .release()
        .ptr();
  });
}
PyObject* fast_fetch_add(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  if (!want_args("fetch_add", n, 1, 2)) return nullptr;
  return guarded([&] {
    py::int_ one(1);
    return core_of(self)->fetch_add(a[0], n == 2 ? a[1] : one.ptr()).release().ptr();
  });
}

// Cast through void(*)(): the CPython calling conventions differ from PyCFunction's type.
template <class F>
PyCFunction cfunc(F* f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

PyMethodDef g_fast_methods[] = {
    {"__getitem__", cfunc(fast_getitem), METH_O, "m[key]: key's value; KeyError if absent."},
    {"__contains__", cfunc(fast_contains), METH_O, "key in m."},
    {"__delitem__", cfunc(fast_delitem), METH_O, "del m[key]; KeyError if absent."},
    {"__setitem__", cfunc(fast_setitem), METH_FASTCALL, "m[key] = value."},
    {"discard", cfunc(fast_discard), METH_O,
     "discard(key): removes key; returns whether it was present."},
    {"insert", cfunc(fast_insert), METH_FASTCALL,
     "insert(key, value): inserts key -> value if key is absent; returns whether it did (never "
     "overwrites)."},
    {"get", cfunc(fast_get), METH_FASTCALL, "get(key, default=None): key's value, or default."},
    {"fetch_add", cfunc(fast_fetch_add), METH_FASTCALL,
     "fetch_add(key, delta=1): adds delta to key's value (int: mod 2**64; an absent key counts "
     "as 0) and returns the previous value."},
};

}  // namespace

PYBIND11_MODULE(_shmap, mod) {
  mod.doc() = "shmap's native half; use the `shmap` package (shmap.Map).";
  pthread_atfork(nullptr, nullptr, &after_fork_in_child);

  g_error = PyErr_NewExceptionWithDoc(
      "shmap.Error",
      "A failure reported by shmap; .code names it (\"not_found\", \"already_exists\", "
      "\"layout_mismatch\", ...).",
      PyExc_Exception, nullptr);
  if (g_error.ptr() == nullptr) throw py::error_already_set();
  py::tuple bases = py::make_tuple(g_error, py::handle(PyExc_ValueError));
  g_invalid_argument = PyErr_NewExceptionWithDoc(
      "shmap.InvalidArgument", "shmap refused an argument (code \"invalid_argument\").",
      bases.ptr(), nullptr);
  if (g_invalid_argument.ptr() == nullptr) throw py::error_already_set();
  g_error.attr("code") = py::none();
  mod.attr("Error") = g_error;
  mod.attr("InvalidArgument") = g_invalid_argument;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const shmap::Error& e) {
      translate(e);
    }
  });

  py::module_ pickle = py::module_::import("pickle");
  g_dumps = py::object(pickle.attr("dumps")).release();
  g_loads = py::object(pickle.attr("loads")).release();
  g_protocol = py::object(pickle.attr("HIGHEST_PROTOCOL")).release();

  mod.attr("MAX_STRING_ENTRY_BYTES") = shmap::kMaxStringEntryBytes;

  mod.def(
      "remove", [](const std::string& name) { return shmap::Map::remove(name); }, py::arg("name"),
      "Unlinks map `name` (attached processes keep using it until they close). False if absent.");
  mod.def(
      "list_maps", [] { return shmap::Map::list(); }, "Names of the shmap maps on this machine.");
  mod.def(
      "load",
      [](const std::string& path, const std::string& name) {
        py::gil_scoped_release release;
        (void)shmap::DynamicMap::load(path, name);
      },
      py::arg("path"), py::arg("name"),
      "Creates map `name` from the snapshot at `path` (binary or JSON).");
  mod.def("_fork_generation", [] { return g_fork_generation.load(std::memory_order_relaxed); });

  py::class_<Core> core(mod, "_Core");
  core.def(py::init<const std::string&, const std::string&, std::optional<std::string>,
                    std::optional<std::string>, bool, std::size_t, std::size_t, unsigned,
                    std::size_t>(),
           py::arg("name"), py::arg("mode"), py::arg("key"), py::arg("value"), py::arg("readonly"),
           py::arg("initial_capacity"), py::arg("max_handles"), py::arg("permissions"),
           py::arg("max_bytes"))
      .def_property_readonly("name", &Core::name, "The map's name.")
      .def_property_readonly("key_type", &Core::key_type, "\"int\", \"bytes\" or \"str\".")
      .def_property_readonly("value_type", &Core::value_type,
                             "\"int\", \"float\", \"bytes\", \"str\" or \"pickle\".")
      .def_property_readonly("readonly", &Core::read_only, "True for a read-only attachment.")
      .def_property_readonly("created", &Core::created, "True if this call created the map.")
      .def_property_readonly("closed", &Core::closed, "True once close() was called.")
      .def("close", &Core::close, "Detaches from the map (the map stays).")
      .def("__len__", &Core::len)
      .def("_pop", &Core::pop)
      .def("setdefault", &Core::setdefault, py::arg("key"), py::arg("default") = py::none(),
           "Inserts key -> default if key is absent (atomically); returns the value key has. "
           "default=None, as dict's: a map whose values cannot be None needs one.")
      .def("compare_exchange", &Core::compare_exchange, py::arg("key"), py::arg("expected"),
           py::arg("desired"),
           "Sets key -> desired only if key is present with value `expected`; returns whether "
           "it did.")
      .def("_update", &Core::update)
      .def("_first_key", &Core::first_key)
      .def("_keys", &Core::keys)
      .def("_values", &Core::values)
      .def("_items", &Core::items)
      .def("find_many", &Core::find_many, py::arg("keys"), py::arg("values") = py::none(),
           py::arg("found") = py::none(),
           "Looks up every key of an array of ints (0 .. 2**64-1, as m[k]: a negative or float "
           "key is refused) without the GIL: returns (values, found), "
           "two arrays as long as keys (values are 0 where not found). values/found: arrays "
           "to write them into (uint64, or float64 for float maps, and bool; as long as keys, "
           "C-contiguous), reused across calls; else new ones.")
      .def("insert_many", &Core::insert_many, py::arg("keys"), py::arg("values"),
           py::arg("overwrite") = true,
           "Sets keys[i] -> values[i] without the GIL (overwrite=False: only where absent); "
           "returns how many keys were absent.")
      .def("fetch_add_many", &Core::fetch_add_many, py::arg("keys"), py::arg("deltas"),
           "Adds deltas[i] to keys[i]'s value (mod 2**64; absent counts as 0) without the GIL; "
           "returns the previous values (int -> int maps).")
      .def("stats", &Core::stats, "The map's statistics (a dict).")
      .def("readers", &Core::readers, "The handle slots in use (a list of dicts).")
      .def("check", &Core::check,
           "Verifies the map's invariants: a dict of ok, problems, notes, live_entries and, for "
           "maps of bytes, str or pickles, records (live, free, retired, leaked, slabs, "
           "inline_entries: short entries kept in their bucket).")
      .def("compact", &Core::compact,
           "Finishes a migration, frees retired tables and records leaked by killed writers.")
      .def("dump", &Core::dump, py::arg("path"), py::arg("json") = false,
           py::arg("point_in_time") = false,
           "Writes a snapshot to path (binary; json=True: the JSON form, int -> int maps only).");
  py::class_<MultiCore>(mod, "_MultiCore")
      .def(py::init<const std::string&, const std::string&, std::optional<std::string>,
                    std::optional<std::string>, bool, std::size_t, std::size_t, unsigned,
                    std::size_t>(),
           py::arg("name"), py::arg("mode"), py::arg("key"), py::arg("value"), py::arg("readonly"),
           py::arg("initial_capacity"), py::arg("max_handles"), py::arg("permissions"),
           py::arg("max_bytes"))
      .def_property_readonly("name", &MultiCore::name, "The multimap's name.")
      .def_property_readonly("key_type", &MultiCore::key_type, "\"int\", \"bytes\" or \"str\".")
      .def_property_readonly("value_type", &MultiCore::value_type,
                             "\"bytes\", \"str\" or \"pickle\".")
      .def_property_readonly("readonly", &MultiCore::read_only)
      .def_property_readonly("created", &MultiCore::created)
      .def_property_readonly("closed", &MultiCore::closed)
      .def("close", &MultiCore::close, "Detaches from the multimap (it stays).")
      .def("add", &MultiCore::add, py::arg("key"), py::arg("value"),
           "Adds value to key's values, after the ones it has (a value may occur twice).")
      .def("add_unique", &MultiCore::add_unique, py::arg("key"), py::arg("value"),
           "Adds value unless key has it already (compared as stored bytes); returns whether it "
           "did.")
      .def("get", &MultiCore::values_of, py::arg("key"),
           "Key's values in the order they were added (a list; empty when absent).")
      .def("count", &MultiCore::count, py::arg("key"), "How many values key has.")
      .def("__contains__", &MultiCore::contains)
      .def("has", &MultiCore::has, py::arg("key"), py::arg("value"),
           "Whether value is one of key's values (compared as stored bytes).")
      .def("discard", &MultiCore::discard, py::arg("key"), py::arg("value"),
           "Removes one occurrence of value from key's values; returns whether there was one.")
      .def("discard_all", &MultiCore::discard_all, py::arg("key"),
           "Removes all of key's values; returns how many there were.")
      .def("__len__", &MultiCore::len, "The number of values (every key's count, summed).")
      .def("_items", [](MultiCore& m) { return m.items(true); })
      .def("_keys", [](MultiCore& m) { return m.items(false); })
      .def("stats", &MultiCore::stats)
      .def("check", &MultiCore::check)
      .def("compact", &MultiCore::compact);

  for (PyMethodDef& def : g_fast_methods) {
    py::object method = py::reinterpret_steal<py::object>(
        PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(core.ptr()), &def));
    if (!method) throw py::error_already_set();
    core.attr(def.ml_name) = method;
  }
}
