package org.edgedfl.wire;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The masks a node holds, by id; bounded, least recently used forgotten first.
 *
 * <p>An update refers to masks only by id; a receiver decodes a {@code mask/1} message into this
 * registry once and then decodes every update against it. A forgotten mask makes the next
 * update that needs it raise {@link WireException.UnknownMask} until it is sent again.
 */
public final class MaskRegistry {
    private final int maxMasks;
    private final Map<String, Mask> masks = new LinkedHashMap<>(16, 0.75f, true);

    /** A registry holding at most {@code maxMasks} masks. */
    public MaskRegistry(int maxMasks) {
        if (maxMasks <= 0) {
            throw new IllegalArgumentException("MaskRegistry: maxMasks=" + maxMasks + " must be > 0");
        }
        this.maxMasks = maxMasks;
    }

    /** A registry with Python's default bound (4096 masks). */
    public MaskRegistry() {
        this(4096);
    }

    /** Store {@code mask} and return its id; adding it again only refreshes it. */
    public synchronized String add(Mask mask) {
        masks.put(mask.id(), mask);
        while (masks.size() > maxMasks) {
            masks.remove(masks.keySet().iterator().next());
        }
        return mask.id();
    }

    /**
     * The mask with id {@code id}.
     *
     * @throws WireException.UnknownMask if it is not held
     */
    public synchronized Mask get(String id) {
        Mask mask = masks.get(id);
        if (mask == null) {
            throw new WireException.UnknownMask(
                    "mask " + id.substring(0, Math.min(16, id.length())) + "... is not held by this receiver");
        }
        return mask;
    }

    public synchronized boolean contains(String id) {
        return masks.containsKey(id);
    }

    public synchronized int size() {
        return masks.size();
    }
}
