// JDBC (pgjdbc) client of the client matrix (tests/integration/test_clients.py), compiled
// by the test with javac against /usr/share/java/postgresql.jar.
//
//   java -cp DIR:/usr/share/java/postgresql.jar Client 'jdbc:postgresql://127.0.0.1:PORT/DB'
//
// Runs against the schema test_clients.py creates (accounts, items, ledger, batch):
// PreparedStatements executed more often than prepareThreshold (default 5), so pgjdbc
// switches them to named server-side statements (S_n); an executeBatch of 1,000 INSERTs
// in one transaction; a failing transaction (a unique violation, then rollback). Prints
// one JSON line with what it did; exits non-zero if anything unexpected happens.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Properties;

public class Client {
    static final int ITEMS = 30;
    static final int SELECTS = 20;
    static final int BATCH = 1000;

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        int items = 0, selected = 0, batched = 0;
        String failed = null;
        boolean serverPrepared = false;
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            c.setAutoCommit(true);
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO items (id, grp, name, price) VALUES (?, ?, ?, ?)")) {
                for (int i = 1; i <= ITEMS; i++) {
                    ps.setInt(1, i);
                    ps.setInt(2, i % 7);
                    ps.setString(3, "item " + i);
                    ps.setBigDecimal(4, new BigDecimal(i).movePointLeft(2));
                    items += ps.executeUpdate();
                }
                serverPrepared = ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, name, price FROM items WHERE grp = ? ORDER BY id")) {
                for (int k = 0; k < SELECTS; k++) {
                    ps.setInt(1, k % 7);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            selected++;
                        }
                    }
                }
            }

            // executeBatch of 1,000 statements in one transaction
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO batch (id, k, note) VALUES (?, ?, ?)")) {
                for (int i = 1; i <= BATCH; i++) {
                    ps.setInt(1, i);
                    ps.setInt(2, i % 13);
                    ps.setString(3, "batch row " + i);
                    ps.addBatch();
                }
                for (int n : ps.executeBatch()) {
                    if (n != 1) {
                        throw new IllegalStateException("batch update count " + n);
                    }
                    batched++;
                }
            }
            c.commit();

            // a failing transaction: the update before the error is rolled back
            try (PreparedStatement up = c.prepareStatement(
                         "UPDATE accounts SET balance = balance + ?, updated_at = now() WHERE id = ?");
                 PreparedStatement ins = c.prepareStatement(
                         "INSERT INTO ledger (id, account, amount, note) VALUES (?, ?, ?, ?)")) {
                up.setBigDecimal(1, new BigDecimal(100));
                up.setInt(2, 1);
                up.executeUpdate();
                ins.setInt(1, 1);
                ins.setInt(2, 1);
                ins.setBigDecimal(3, new BigDecimal(100));
                ins.setString(4, "first");
                ins.executeUpdate();
                c.commit();
                up.setBigDecimal(1, new BigDecimal(1000));
                up.setInt(2, 2);
                up.executeUpdate();
                ins.setString(4, "duplicate");
                try {
                    ins.executeUpdate();
                    throw new IllegalStateException("the duplicate insert did not fail");
                } catch (SQLException e) {
                    failed = e.getSQLState();
                    c.rollback();
                }
            }
            c.setAutoCommit(true);
        }
        System.out.printf("{\"items\": %d, \"selected\": %d, \"batched\": %d, "
                + "\"server_prepared\": %b, \"failed_sqlstate\": \"%s\"}%n",
                items, selected, batched, serverPrepared, failed);
    }
}
