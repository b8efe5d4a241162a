import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Statement;
import java.util.ArrayList;
import java.sql.Driver;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;

/**
 * Drives a JDBC driver for portcullis's compatibility suite: pgjdbc
 * ("postgresql") or MariaDB Connector/J ("mariadb"), named by the first
 * argument. One command per line on stdin (tab-separated), one JSON answer
 * per line on stdout; the protocol is described in
 * compat/procdriver_test.go. Only java.sql is used, so that the program
 * compiles without either driver.
 */
public final class CompatDriver {
    private static final PrintStream OUT = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    private static BufferedReader in;
    private static Connection conn;
    private static String kind;

    public static void main(String[] args) throws Exception {
        kind = args[0];
        in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] f = line.split("\t", -1);
            try {
                switch (f[0]) {
                    case "version" -> {
                        Driver d = DriverManager.getDriver(url(""));
                        reply("\"version\":" + json(d.getMajorVersion() + "." + d.getMinorVersion() + " (Java " + System.getProperty("java.version") + ")"));
                    }
                    case "connect" -> connect(f[1], f[2], f[3], f[4]);
                    case "query" -> query(f[1]);
                    case "prepared" -> prepared(f[1], f[2], f[3]);
                    case "rollback" -> rollback(f[1], f[2]);
                    case "cancel" -> cancel(f[1]);
                    case "close" -> {
                        closeConn();
                        reply("");
                    }
                    default -> replyError("", "unknown command " + f[0]);
                }
            } catch (SQLException e) {
                replyError(e);
            } catch (Exception e) {
                replyError("", e.toString());
            }
        }
        closeConn();
    }

    private static String url(String database) {
        return "jdbc:" + kind + "://" + System.getenv("COMPAT_HOST") + ":" + System.getenv("COMPAT_PORT") + "/" + database;
    }

    private static void connect(String database, String user, String password, String caFile) throws SQLException {
        closeConn();
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        if (kind.equals("postgresql")) {
            // verify-full: the chain against this CA, and the host name.
            p.setProperty("sslmode", "verify-full");
            p.setProperty("sslrootcert", caFile);
            p.setProperty("connectTimeout", "30");
        } else {
            // Connector/J 2.x: TLS trusting this CA; it checks the host
            // name unless told not to.
            p.setProperty("useSsl", "true");
            p.setProperty("serverSslCert", caFile);
            p.setProperty("connectTimeout", "30000");
            // Prepared statements on the server (COM_STMT_PREPARE), not
            // emulated in the driver.
            p.setProperty("useServerPrepStmts", "true");
        }
        conn = DriverManager.getConnection(url(database), p);
        // Notices sent while connecting (the session key) become the
        // connection's warnings.
        for (SQLWarning w = conn.getWarnings(); w != null; w = w.getNextWarning()) {
            notice(w.getMessage());
        }
        conn.clearWarnings();
        reply("");
    }

    private static void query(String sql) throws Exception {
        MessageDigest sha = MessageDigest.getInstance("SHA-256");
        List<String> first = null;
        int count = 0;
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            int n = rs.getMetaData().getColumnCount();
            while (rs.next()) {
                List<String> cols = new ArrayList<>();
                for (int i = 1; i <= n; i++) {
                    cols.add(rs.getString(i));
                }
                if (first == null) {
                    first = cols;
                }
                sha.update((String.join("|", cols) + "\n").getBytes(StandardCharsets.UTF_8));
                count++;
            }
        }
        reply("\"count\":" + count + ",\"sha256\":" + json(HexFormat.of().formatHex(sha.digest())) + ",\"first\":" + jsonList(first));
    }

    private static void prepared(String sql, String check, String args) throws SQLException {
        List<String> results = new ArrayList<>();
        // JDBC marks parameters with '?'. pgjdbc prepares on the server
        // once a statement has run prepareThreshold (5) times.
        try (PreparedStatement ps = conn.prepareStatement(sql.replace("$1", "?"))) {
            for (String a : args.split(",")) {
                ps.setInt(1, Integer.parseInt(a));
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    results.add(rs.getString(1));
                }
            }
            reply("\"results\":" + jsonList(results) + ",\"check\":" + json(one(check)));
        }
    }

    private static void rollback(String insert, String count) throws SQLException {
        conn.setAutoCommit(false);
        String inside;
        try (Statement st = conn.createStatement()) {
            st.executeUpdate(insert);
            inside = one(count);
        } finally {
            conn.rollback();
            conn.setAutoCommit(true);
        }
        reply("\"inside\":" + json(inside) + ",\"after\":" + json(one(count)));
    }

    private static void cancel(String sql) throws Exception {
        Statement st = conn.createStatement();
        SQLException[] failure = new SQLException[1];
        long[] ended = new long[1];
        Thread runner = new Thread(() -> {
            try {
                st.execute(sql);
            } catch (SQLException e) {
                failure[0] = e;
            }
            ended[0] = System.nanoTime();
        });
        runner.start();
        emit("{\"type\":\"started\"}");
        String go = in.readLine();
        if (go == null) {
            return;
        }
        long start = System.nanoTime();
        st.cancel();
        runner.join();
        st.close();
        long ms = (ended[0] - start) / 1_000_000;
        if (failure[0] != null) {
            replyError(failure[0], "\"ms\":" + ms);
        } else {
            reply("\"ms\":" + ms);
        }
    }

    private static String one(String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    private static void closeConn() {
        if (conn != null) {
            try {
                conn.close();
            } catch (SQLException e) {
                // Closing a connection the server already ended.
            }
            conn = null;
        }
    }

    private static void notice(String message) {
        emit("{\"type\":\"notice\",\"message\":" + json(message) + "}");
    }

    private static void reply(String fields) {
        System.err.println("compat-sync");
        System.err.flush();
        emit("{\"type\":\"reply\",\"ok\":true" + (fields.isEmpty() ? "" : "," + fields) + "}");
    }

    private static void replyError(SQLException e) {
        replyError(e, "");
    }

    /**
     * A server error carries the server's code (SQLSTATE for PostgreSQL, the
     * error number for MariaDB); the driver's own (TLS, I/O) do not.
     */
    private static void replyError(SQLException e, String extra) {
        String code = "";
        String message = e.getMessage();
        Object server = serverErrorMessage(e);
        if (server != null) {
            code = e.getSQLState();
            message = call(server, "getMessage");
        } else if (kind.equals("mariadb") && e.getErrorCode() > 0 && e.getErrorCode() < 2000) {
            code = Integer.toString(e.getErrorCode());
        } else if (e.getCause() != null) {
            message = message + ": " + e.getCause();
        }
        System.err.println("compat-sync");
        System.err.flush();
        emit("{\"type\":\"reply\",\"ok\":false,\"code\":" + json(code) + ",\"message\":" + json(message) + (extra.isEmpty() ? "" : "," + extra) + "}");
    }

    /** pgjdbc's PSQLException.getServerErrorMessage(), without compiling against pgjdbc. */
    private static Object serverErrorMessage(SQLException e) {
        try {
            return e.getClass().getMethod("getServerErrorMessage").invoke(e);
        } catch (ReflectiveOperationException notPgjdbc) {
            return null;
        }
    }

    private static String call(Object o, String method) {
        try {
            return String.valueOf(o.getClass().getMethod(method).invoke(o));
        } catch (ReflectiveOperationException e) {
            return String.valueOf(o);
        }
    }

    private static void replyError(String code, String message) {
        System.err.println("compat-sync");
        System.err.flush();
        emit("{\"type\":\"reply\",\"ok\":false,\"code\":" + json(code) + ",\"message\":" + json(message) + "}");
    }

    private static synchronized void emit(String line) {
        OUT.print(line + "\n");
        OUT.flush();
    }

    private static String jsonList(List<String> items) {
        if (items == null) {
            return "null";
        }
        List<String> quoted = new ArrayList<>();
        for (String s : items) {
            quoted.add(json(s));
        }
        return "[" + String.join(",", quoted) + "]";
    }

    private static String json(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
