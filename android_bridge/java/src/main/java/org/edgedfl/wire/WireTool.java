package org.edgedfl.wire;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small command line over the codec: what the Python tests drive to cross-check the two
 * implementations on fresh data, and a debugging aid for app developers.
 *
 * <pre>
 * roundtrip IN OUT                      decode an envelope and its body to the typed model, re-encode
 * rebuild MASKS IN OUT [SEED_HEX KEY_ID] decode an update to dense float32 with the masks of MASKS
 *                                       (a mask envelope), encode it again from those floats at the
 *                                       same precision (signed with SEED_HEX if given)
 * encode TENSORS MASKS PRECISION OUT    encode the float32 tensors of TENSORS (a hello-style envelope
 *                                       with a tensors/1 body) as an update body at PRECISION, sparse
 *                                       where MASKS (a mask envelope) has a mask of the same name
 * join OUT CHUNK...                     reassemble chunks (in the order given)
 * split IN CHUNK_SIZE OUT_PREFIX        write OUT_PREFIX.000.bin, ...
 * check [--pub KEY_ID HEX] [--masks F] FILE...
 *                                       fully decode each file; print "ok" or the Python error
 *                                       class name per file, one line each
 * info IN                               print what a message holds
 * </pre>
 *
 * Exit status: 0 on success, 1 when a message is rejected, 2 on bad usage.
 */
public final class WireTool {
    private WireTool() {}

    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    /** Run one command; returns the exit status. */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        if (args.length == 0) {
            return usage(err);
        }
        try {
            switch (args[0]) {
                case "roundtrip" -> {
                    if (args.length != 3) {
                        return usage(err);
                    }
                    write(args[2], roundTrip(read(args[1])));
                }
                case "rebuild" -> {
                    if (args.length != 4 && args.length != 6) {
                        return usage(err);
                    }
                    Signer signer = args.length == 6 ? Signer.fromSeed(Hex.decode(args[4]), args[5]) : null;
                    write(args[3], rebuild(read(args[1]), read(args[2]), signer));
                }
                case "encode" -> {
                    if (args.length != 5) {
                        return usage(err);
                    }
                    write(args[4], encode(read(args[1]), read(args[2]), Precision.parse(args[3])));
                }
                case "join" -> {
                    if (args.length < 3) {
                        return usage(err);
                    }
                    Chunks.Reassembler r = new Chunks.Reassembler();
                    byte[] message = null;
                    for (int i = 2; i < args.length; i++) {
                        byte[] done = r.add(read(args[i]), "cli");
                        message = done != null ? done : message;
                    }
                    if (message == null) {
                        err.println("ChunkError: chunks do not complete a message");
                        return 1;
                    }
                    write(args[1], message);
                }
                case "split" -> {
                    if (args.length != 4) {
                        return usage(err);
                    }
                    List<byte[]> chunks = Chunks.split(read(args[1]), Integer.parseInt(args[2]));
                    for (int i = 0; i < chunks.size(); i++) {
                        write(String.format("%s.%03d.bin", args[3], i), chunks.get(i));
                    }
                }
                case "check" -> {
                    return check(Arrays.copyOfRange(args, 1, args.length), out);
                }
                case "info" -> {
                    if (args.length != 2) {
                        return usage(err);
                    }
                    out.println(info(read(args[1])));
                }
                default -> {
                    return usage(err);
                }
            }
        } catch (WireException e) {
            err.println(e.pythonName() + ": " + e.getMessage());
            return 1;
        } catch (IOException e) {
            err.println("I/O error: " + e.getMessage());
            return 2;
        }
        return 0;
    }

    private static int usage(PrintStream err) {
        err.println("usage: WireTool roundtrip IN OUT | rebuild MASKS IN OUT [SEED_HEX KEY_ID] | encode TENSORS MASKS PRECISION OUT | join OUT CHUNK... | "
                + "split IN CHUNK_SIZE OUT_PREFIX | check [--pub KEY_ID HEX] [--masks FILE] FILE... | info IN");
        return 2;
    }

    private static byte[] read(String path) throws IOException {
        return Files.readAllBytes(Path.of(path));
    }

    private static void write(String path, byte[] data) throws IOException {
        Files.write(Path.of(path), data);
    }

    /**
     * Decode an envelope and its body to the typed model and encode both again. A signed envelope
     * keeps its signature (as a relay would), so the output equals the input iff the codec is
     * byte-exact.
     */
    public static byte[] roundTrip(byte[] message) {
        Envelope env = Envelope.decode(message);
        byte[] body = env.body();
        byte[] again;
        if (body.length == 0) {
            again = body;
        } else {
            String codec = Codec.codecOf(body, Limits.DEFAULT);
            again = switch (codec) {
                case Codec.TENSORS_CODEC -> Codec.encodeTensors(Codec.decodeTensors(body, null, Limits.DEFAULT));
                case Codec.MASK_CODEC -> Codec.encodeMasks(Codec.decodeMasks(body, null, Limits.DEFAULT));
                case Codec.UPDATE_CODEC -> Codec.writeUpdate(Codec.readUpdate(body, Limits.DEFAULT));
                default -> throw new WireException.MalformedMessage("unknown body codec " + codec);
            };
        }
        return new Envelope(env.kind(), env.swarm(), env.sender(), env.round(), env.slot(), env.seq(), again,
                env.meta(), env.error(), env.keyId(), env.signature()).encode();
    }

    /**
     * Decode an update to dense float32 tensors (masks from a mask envelope) and encode it again
     * from those floats: the path a phone takes when it trains on a received B and sends its own.
     */
    public static byte[] rebuild(byte[] maskMessage, byte[] updateMessage, Signer signer) {
        MaskRegistry registry = new MaskRegistry();
        Codec.decodeMasks(Envelope.decode(maskMessage).body(), registry, Limits.DEFAULT);
        Envelope env = Envelope.decode(updateMessage);
        List<UpdateTensor> wire = Codec.readUpdate(env.body(), Limits.DEFAULT);
        Map<String, FloatTensor> dense = Codec.decodeUpdate(env.body(), registry, null, Limits.DEFAULT);
        Map<String, Mask> masks = new LinkedHashMap<>();
        Precision precision = Precision.FP16;
        for (UpdateTensor t : wire) {
            precision = t.precision(); // the reference writer uses one precision per update
            if (t.maskId() != null) {
                masks.put(t.name(), registry.get(t.maskId()));
            }
        }
        byte[] body = Codec.encodeUpdate(dense, masks, precision);
        return env.withBody(body).encode(signer);
    }

    /** An update body from plain float32 tensors and named masks (the encoder on its own). */
    public static byte[] encode(byte[] tensorsMessage, byte[] maskMessage, Precision precision) {
        Map<String, Mask> masks = Codec.decodeMasks(Envelope.decode(maskMessage).body(), null, Limits.DEFAULT);
        Map<String, FloatTensor> tensors = new LinkedHashMap<>();
        Codec.decodeTensors(Envelope.decode(tensorsMessage).body(), null, Limits.DEFAULT)
                .forEach((name, t) -> tensors.put(name, new FloatTensor(t.shape(), t.toFloats())));
        return Codec.encodeUpdate(tensors, masks, precision);
    }

    private static int check(String[] args, PrintStream out) throws IOException {
        KeyRing ring = null;
        MaskRegistry registry = new MaskRegistry();
        int i = 0;
        while (i < args.length && args[i].startsWith("--")) {
            if (args[i].equals("--pub") && i + 2 < args.length) {
                ring = (ring == null ? new KeyRing() : ring).add(args[i + 1], Hex.decode(args[i + 2]));
                i += 3;
            } else if (args[i].equals("--masks") && i + 1 < args.length) {
                Codec.decodeMasks(Envelope.decode(read(args[i + 1])).body(), registry, Limits.DEFAULT);
                i += 2;
            } else {
                return usage(System.err);
            }
        }
        for (; i < args.length; i++) {
            try {
                decodeFully(read(args[i]), ring, registry);
                out.println("ok");
            } catch (WireException e) {
                out.println(e.pythonName());
            }
        }
        return 0;
    }

    /** Everything a receiver does to one message: envelope, signature, body by kind. */
    static void decodeFully(byte[] message, KeyRing ring, MaskRegistry registry) {
        if (Chunks.isChunk(message)) {
            Chunks.parseHeader(message);
            return;
        }
        Envelope env = Envelope.decode(message, Limits.DEFAULT, ring);
        switch (env.kind()) {
            case "update", "expert" -> Codec.decodeUpdate(env.body(), registry, null, Limits.DEFAULT);
            case "mask" -> Codec.decodeMasks(env.body(), registry, Limits.DEFAULT);
            case "error" -> { }
            default -> Codec.decodeTensors(env.body(), null, Limits.DEFAULT);
        }
    }

    private static String info(byte[] message) {
        if (Chunks.isChunk(message)) {
            Chunks.Header h = Chunks.parseHeader(message);
            return "chunk " + h.index() + "/" + h.count() + " of a " + h.total() + "-byte message";
        }
        Envelope env = Envelope.decode(message);
        StringBuilder s = new StringBuilder(env.toString());
        if (env.body().length > 0) {
            SafeTensors.Parsed parsed = SafeTensors.read(env.body(), Limits.DEFAULT);
            s.append("\n  codec ").append(Codec.codecOf(env.body(), Limits.DEFAULT));
            parsed.tensors().forEach((name, t) -> s.append("\n  ").append(name).append(' ').append(t.dtype())
                    .append(Arrays.toString(t.shape())));
        } else if (env.isError()) {
            s.append("\n  error: ").append(env.error());
        }
        return s.toString();
    }
}
