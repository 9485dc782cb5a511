package io.heapballoon.agent;

import java.io.ByteArrayOutputStream;
import java.io.Closeable;
import java.io.EOFException;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * Owns one connection to the driver's Unix socket: NDJSON lines out, complete lines in (lines
 * of 1 MiB or more are dropped). Used by the agent thread only.
 */
final class DriverLink implements Closeable {
    static final int MAX_LINE_BYTES = 1 << 20;
    static final long SEND_TIMEOUT_MS = 5000;

    private final SocketChannel channel;
    private final Selector selector;
    private final Runnable whileWaiting;
    private final ByteBuffer in = ByteBuffer.allocate(64 << 10);
    private final ByteArrayOutputStream line = new ByteArrayOutputStream();
    private boolean dropping;

    private DriverLink(SocketChannel channel, Selector selector, Runnable whileWaiting) {
        this.channel = channel;
        this.selector = selector;
        this.whileWaiting = whileWaiting;
    }

    /** Connects; {@code whileWaiting} runs periodically while a send waits for the driver. */
    static DriverLink connect(String socketPath, Runnable whileWaiting) throws IOException {
        SocketChannel channel = SocketChannel.open(StandardProtocolFamily.UNIX);
        try {
            channel.connect(UnixDomainSocketAddress.of(socketPath));
            channel.configureBlocking(false);
            Selector selector = Selector.open();
            channel.register(selector, SelectionKey.OP_READ);
            return new DriverLink(channel, selector, whileWaiting);
        } catch (IOException | RuntimeException e) {
            channel.close();
            throw e instanceof IOException ? (IOException) e : new IOException(e.toString(), e);
        }
    }

    /** Waits up to {@code timeoutMs} for input; returns the complete lines received. */
    List<String> poll(long timeoutMs) throws IOException {
        selector.select(Math.max(1, timeoutMs));
        selector.selectedKeys().clear();
        List<String> lines = new ArrayList<>();
        while (true) {
            in.clear();
            int n = channel.read(in);
            if (n < 0) {
                throw new EOFException("driver closed the connection");
            }
            if (n == 0) {
                return lines;
            }
            for (int i = 0; i < n; i++) {
                byte b = in.get(i);
                if (b == '\n') {
                    if (!dropping) {
                        lines.add(line.toString(StandardCharsets.UTF_8));
                    }
                    line.reset();
                    dropping = false;
                } else if (!dropping) {
                    line.write(b);
                    if (line.size() >= MAX_LINE_BYTES) {
                        dropping = true;
                        line.reset();
                    }
                }
            }
        }
    }

    void send(String json) throws IOException {
        ByteBuffer out = StandardCharsets.UTF_8.encode(json + "\n");
        long waitedMs = 0;
        while (out.hasRemaining()) {
            if (channel.write(out) > 0) {
                continue;
            }
            if (waitedMs >= SEND_TIMEOUT_MS) {
                throw new IOException("driver does not read");
            }
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted");
            }
            waitedMs += 5;
            if (waitedMs % 50 == 0) {
                whileWaiting.run();
            }
        }
    }

    @Override
    public void close() {
        try {
            selector.close();
        } catch (IOException ignored) {
            // closing anyway
        }
        try {
            channel.close();
        } catch (IOException ignored) {
            // closing anyway
        }
    }
}
