package org.edgedfl.wire;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The two JSON dialects of the wire format, written byte for byte as the Python reference does.
 *
 * <ul>
 *   <li><b>Canonical JSON</b> (envelope headers, the {@code "edgedfl"} metadata value): Python's
 *       {@code json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)}. Keys
 *       sorted by code point, no spaces, every character outside {@code ' '..'~'} written as a
 *       lowercase {@code \}{@code uXXXX} escape per UTF-16 unit (so astral characters become
 *       surrogate pairs, as in Python), integers only.
 *   <li><b>serde_json strings</b> (names and metadata inside a safetensors header, written by the
 *       Rust safetensors library): only {@code "}, {@code \} and control characters are escaped;
 *       everything else, DEL and non-ASCII included, is raw UTF-8. See {@link #appendSerdeString}.
 * </ul>
 *
 * <p>The reader is strict like Python's {@code json.loads} with the envelope's duplicate-key hook:
 * UTF-8 only, no control characters inside strings, duplicate keys refused, nothing after the
 * value. Objects become insertion-ordered {@code Map<String, Object>}, arrays {@code
 * List<Object>}, integers {@link Long}, JSON {@code null} the {@link #NULL} marker. Numbers with
 * a fraction or exponent are refused outright: no field of the format is a float, and Python
 * refuses them one step later, also as {@code MalformedMessage}.
 */
public final class Json {
    /** JSON {@code null}, distinct from a missing key. */
    public static final Object NULL = new Object() {
        @Override
        public String toString() {
            return "null";
        }
    };

    /** Deepest nesting the reader follows (Python's recursion limit plays this role there). */
    public static final int MAX_DEPTH = 256;

    /**
     * Python's {@code sort_keys} order: by Unicode code point. {@link String#compareTo} compares
     * UTF-16 units, which disagrees for astral characters against U+E000..U+FFFF.
     */
    public static final Comparator<String> CODE_POINT_ORDER = (a, b) -> {
        int i = 0;
        int j = 0;
        while (i < a.length() && j < b.length()) {
            int ca = a.codePointAt(i);
            int cb = b.codePointAt(j);
            if (ca != cb) {
                return Integer.compare(ca, cb);
            }
            i += Character.charCount(ca);
            j += Character.charCount(cb);
        }
        return Integer.compare(a.length() - i, b.length() - j);
    };

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private Json() {}

    // --- canonical writer ------------------------------------------------------------------

    /** Canonical JSON text of {@code value} (see the class comment). */
    public static String canonical(Object value) {
        StringBuilder out = new StringBuilder();
        writeCanonical(out, value);
        return out.toString();
    }

    /** Canonical JSON as bytes (ASCII by construction). */
    public static byte[] canonicalBytes(Object value) {
        return canonical(value).getBytes(StandardCharsets.US_ASCII);
    }

    private static void writeCanonical(StringBuilder out, Object value) {
        if (value == null || value == NULL) {
            out.append("null");
        } else if (value instanceof String) {
            appendPythonAsciiString(out, (String) value);
        } else if (value instanceof Long || value instanceof Integer) {
            out.append(((Number) value).longValue());
        } else if (value instanceof Boolean) {
            out.append(((Boolean) value) ? "true" : "false");
        } else if (value instanceof long[]) {
            out.append('[');
            long[] array = (long[]) value;
            for (int i = 0; i < array.length; i++) {
                if (i > 0) {
                    out.append(',');
                }
                out.append(array[i]);
            }
            out.append(']');
        } else if (value instanceof Map) {
            TreeMap<String, Object> sorted = new TreeMap<>(CODE_POINT_ORDER);
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                if (!(e.getKey() instanceof String)) {
                    throw new IllegalArgumentException("canonical JSON keys must be strings");
                }
                sorted.put((String) e.getKey(), e.getValue());
            }
            out.append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : sorted.entrySet()) {
                if (!first) {
                    out.append(',');
                }
                first = false;
                appendPythonAsciiString(out, e.getKey());
                out.append(':');
                writeCanonical(out, e.getValue());
            }
            out.append('}');
        } else if (value instanceof Iterable) {
            out.append('[');
            boolean first = true;
            for (Object item : (Iterable<?>) value) {
                if (!first) {
                    out.append(',');
                }
                first = false;
                writeCanonical(out, item);
            }
            out.append(']');
        } else {
            // Floats included: the format has none, and their spelling would differ from Python's repr.
            throw new IllegalArgumentException("canonical JSON cannot hold " + value.getClass().getName());
        }
    }

    /** A string as Python's {@code ensure_ascii=True} writes it (C encoder's rules). */
    static void appendPythonAsciiString(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c >= ' ' && c <= '~') {
                        out.append(c);
                    } else { // includes DEL (0x7f), which Python escapes too
                        appendUnicodeEscape(out, c);
                    }
            }
        }
        out.append('"');
    }

    /** A string as serde_json (the safetensors writer) writes it: raw UTF-8 beyond the escapes. */
    static void appendSerdeString(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20) {
                        appendUnicodeEscape(out, c);
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }

    private static void appendUnicodeEscape(StringBuilder out, char c) {
        out.append("\\u").append(HEX[(c >> 12) & 0xf]).append(HEX[(c >> 8) & 0xf])
                .append(HEX[(c >> 4) & 0xf]).append(HEX[c & 0xf]);
    }

    // --- strict reader ---------------------------------------------------------------------

    /**
     * Parse UTF-8 JSON text strictly; any failure is a {@link WireException.MalformedMessage}
     * naming {@code what}.
     */
    public static Object parse(byte[] utf8, String what) {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(utf8)).toString();
        } catch (CharacterCodingException e) {
            throw new WireException.MalformedMessage(what + " is not valid UTF-8");
        }
        Parser p = new Parser(text, what);
        p.skipWhitespace();
        Object value = p.value(0);
        p.skipWhitespace();
        if (p.pos != text.length()) {
            throw p.error("extra data");
        }
        return value;
    }

    /** {@link #parse} that also requires a JSON object at the top (as every header is). */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> parseObject(byte[] utf8, String what) {
        Object value = parse(utf8, what);
        if (!(value instanceof Map)) {
            throw new WireException.MalformedMessage(what + " must be a JSON object, got " + typeName(value));
        }
        return (Map<String, Object>) value;
    }

    /** Python-like type name of a parsed value, for error messages. */
    static String typeName(Object value) {
        if (value == NULL) {
            return "NoneType";
        } else if (value instanceof Map) {
            return "dict";
        } else if (value instanceof List) {
            return "list";
        } else if (value instanceof String) {
            return "str";
        } else if (value instanceof Long) {
            return "int";
        } else if (value instanceof Boolean) {
            return "bool";
        }
        return value.getClass().getSimpleName();
    }

    private static final class Parser {
        private final String text;
        private final String what;
        private int pos;

        Parser(String text, String what) {
            this.text = text;
            this.what = what;
        }

        WireException.MalformedMessage error(String why) {
            return new WireException.MalformedMessage(what + " is not valid JSON: " + why + " at char " + pos);
        }

        void skipWhitespace() {
            while (pos < text.length()) {
                char c = text.charAt(pos);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                    pos++;
                } else {
                    break;
                }
            }
        }

        Object value(int depth) {
            if (depth > MAX_DEPTH) {
                throw error("nested deeper than " + MAX_DEPTH);
            }
            if (pos >= text.length()) {
                throw error("expecting value");
            }
            char c = text.charAt(pos);
            switch (c) {
                case '{': return object(depth);
                case '[': return array(depth);
                case '"': return string();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", NULL);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        return number();
                    }
                    throw error("expecting value");
            }
        }

        private Object literal(String word, Object result) {
            if (!text.startsWith(word, pos)) {
                throw error("expecting value");
            }
            pos += word.length();
            return result;
        }

        private Map<String, Object> object(int depth) {
            pos++; // '{'
            Map<String, Object> result = new LinkedHashMap<>();
            skipWhitespace();
            if (pos < text.length() && text.charAt(pos) == '}') {
                pos++;
                return result;
            }
            while (true) {
                skipWhitespace();
                if (pos >= text.length() || text.charAt(pos) != '"') {
                    throw error("expecting property name enclosed in double quotes");
                }
                String key = string();
                skipWhitespace();
                expect(':');
                skipWhitespace();
                Object value = value(depth + 1);
                // Two values for one key would let a signer and a reader disagree on what was signed.
                if (result.containsKey(key)) {
                    throw new WireException.MalformedMessage("JSON header repeats key '" + key + "'");
                }
                result.put(key, value);
                skipWhitespace();
                if (pos < text.length() && text.charAt(pos) == ',') {
                    pos++;
                    continue;
                }
                expect('}');
                return result;
            }
        }

        private List<Object> array(int depth) {
            pos++; // '['
            List<Object> result = new ArrayList<>();
            skipWhitespace();
            if (pos < text.length() && text.charAt(pos) == ']') {
                pos++;
                return result;
            }
            while (true) {
                skipWhitespace();
                result.add(value(depth + 1));
                skipWhitespace();
                if (pos < text.length() && text.charAt(pos) == ',') {
                    pos++;
                    continue;
                }
                expect(']');
                return result;
            }
        }

        private void expect(char c) {
            if (pos >= text.length() || text.charAt(pos) != c) {
                throw error("expecting '" + c + "'");
            }
            pos++;
        }

        private String string() {
            pos++; // opening quote
            StringBuilder out = new StringBuilder();
            while (true) {
                if (pos >= text.length()) {
                    throw error("unterminated string");
                }
                char c = text.charAt(pos++);
                if (c == '"') {
                    return out.toString();
                }
                if (c < 0x20) {
                    throw error("invalid control character in string");
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                if (pos >= text.length()) {
                    throw error("unterminated string");
                }
                char e = text.charAt(pos++);
                switch (e) {
                    case '"': out.append('"'); break;
                    case '\\': out.append('\\'); break;
                    case '/': out.append('/'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'n': out.append('\n'); break;
                    case 'r': out.append('\r'); break;
                    case 't': out.append('\t'); break;
                    case 'u':
                        if (pos + 4 > text.length()) {
                            throw error("invalid \\uXXXX escape");
                        }
                        int code = 0;
                        for (int k = 0; k < 4; k++) {
                            int d = Character.digit(text.charAt(pos + k), 16);
                            if (d < 0) {
                                throw error("invalid \\uXXXX escape");
                            }
                            code = code * 16 + d;
                        }
                        pos += 4;
                        out.append((char) code); // surrogate pairs recombine in UTF-16 by themselves
                        break;
                    default:
                        throw error("invalid \\escape");
                }
            }
        }

        private Long number() {
            int start = pos;
            if (text.charAt(pos) == '-') {
                pos++;
            }
            if (pos >= text.length() || !isDigit(text.charAt(pos))) {
                throw error("expecting value");
            }
            if (text.charAt(pos) == '0') {
                pos++;
            } else {
                while (pos < text.length() && isDigit(text.charAt(pos))) {
                    pos++;
                }
            }
            if (pos < text.length() && (text.charAt(pos) == '.' || text.charAt(pos) == 'e'
                    || text.charAt(pos) == 'E')) {
                throw error("non-integer number (the wire format has no floats)");
            }
            try {
                return Long.parseLong(text.substring(start, pos));
            } catch (NumberFormatException ex) {
                throw error("integer out of the 64-bit range");
            }
        }

        private static boolean isDigit(char c) {
            return c >= '0' && c <= '9';
        }
    }
}
