'use strict';
// node-postgres client of the client matrix (tests/integration/test_clients.py).
//
//   node client.js '{"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "db"}'
//
// Runs against the schema test_clients.py creates (accounts, items, ledger): named queries
// (Parse once per connection, then Bind/Execute), unnamed parameterized queries, an
// explicit transaction, a failing statement on its own and a failing transaction (both
// unique violations: they fail while executing, so the server logs their Execute). Prints
// one JSON line with what it did; exits non-zero if anything unexpected happens.

const { Client } = require('pg');

const ITEMS = 200;
const TRANSFERS = 20;

const insertItem = {
  name: 'insert-item',
  text: 'INSERT INTO items (id, grp, name, payload, price) VALUES ($1, $2, $3, $4, $5)',
};
const itemsByGroup = {
  name: 'items-by-grp',
  text: 'SELECT id, name, payload, price FROM items WHERE grp = $1 ORDER BY id',
};
const debit = {
  name: 'debit',
  text: 'UPDATE accounts SET balance = balance - $1, updated_at = now() WHERE id = $2',
};
const credit = {
  name: 'credit',
  text: 'UPDATE accounts SET balance = balance + $1, updated_at = now() WHERE id = $2',
};
const ledger = {
  name: 'ledger',
  text: 'INSERT INTO ledger (id, account, amount, note) VALUES ($1, $2, $3, $4)',
};

function named(q, values) {
  return { name: q.name, text: q.text, values };
}

async function expectError(client, query, sqlstate, out) {
  try {
    await client.query(query);
  } catch (e) {
    if (e.code !== sqlstate) throw e;
    out.errors.push(e.code);
    return;
  }
  throw new Error(`expected SQLSTATE ${sqlstate} from ${JSON.stringify(query)}`);
}

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const client = new Client(cfg);
  await client.connect();
  const out = { items: 0, selected: 0, transfers: 0, errors: [] };

  // named queries: Parse once, then Bind/Execute
  for (let i = 1; i <= ITEMS; i++) {
    const payload = Buffer.alloc(i % 40, i % 256);
    await client.query(named(insertItem, [i, i % 7, `item ${i}`, payload, (i / 4).toFixed(2)]));
    out.items++;
  }
  for (let k = 0; k < 21; k++) {
    const r = await client.query(named(itemsByGroup, [k % 7]));
    out.selected += r.rowCount;
  }

  // a transaction
  await client.query('BEGIN');
  for (let k = 1; k <= TRANSFERS; k++) {
    const a = (k % 10) + 1;
    const b = ((k * 3) % 10) + 1;
    await client.query(named(debit, [k, a]));
    await client.query(named(credit, [k, b]));
    await client.query(named(ledger, [k, a, k, 'transfer']));
    out.transfers++;
  }
  await client.query('COMMIT');

  // a failing statement (its own implicit transaction)
  await expectError(client, named(ledger, [1, 1, 1, 'duplicate']), '23505', out);

  // a failing transaction: the debit before the error is rolled back
  await client.query('BEGIN');
  await client.query(named(debit, [500, 1]));
  await expectError(client, named(ledger, [2, 1, 500, 'duplicate']), '23505', out);
  await client.query('ROLLBACK');

  // unnamed parameterized queries (Parse of the unnamed statement every time)
  for (let k = 1; k <= 10; k++) {
    await client.query('INSERT INTO ledger (id, account, amount, note) VALUES ($1, $2, $3, $4)',
      [100 + k, k, k * 2, 'unnamed']);
  }
  const r = await client.query('SELECT count(*)::int AS n FROM ledger WHERE id > $1', [0]);
  out.ledger = r.rows[0].n;

  await client.end();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
