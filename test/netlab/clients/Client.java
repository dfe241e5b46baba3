// The lab's Java client for the keepalive audit, run with the source
// launcher: java Client.java HOST PORT. socket.setKeepAlive(true); requests,
// says "ready", waits for a line on stdin while the connection idles,
// requests again; exits 0 if the connection survived, 1 if not.
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

public class Client {
    public static void main(String[] args) throws IOException {
        Socket socket = new Socket();
        socket.setKeepAlive(true);
        socket.connect(new InetSocketAddress(args[0], Integer.parseInt(args[1])), 5000);
        socket.setSoTimeout(5000);
        BufferedReader in = new BufferedReader(new InputStreamReader(socket.getInputStream(), StandardCharsets.US_ASCII));
        OutputStream out = socket.getOutputStream();
        request(in, out);
        System.out.println("ready");
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII)).readLine();
        try {
            request(in, out);
        } catch (IOException e) {
            System.err.println("request after idling: " + e);
            System.exit(1);
        }
        System.out.println("alive");
    }

    static void request(BufferedReader in, OutputStream out) throws IOException {
        out.write("ping\n".getBytes(StandardCharsets.US_ASCII));
        out.flush();
        String line = in.readLine();
        if (!"ok".equals(line)) {
            throw new IOException("unexpected answer " + line);
        }
    }
}
