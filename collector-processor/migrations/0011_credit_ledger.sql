-- The prepaid credit ledger (contracts/src/credits.ts): every change of a customer's wallet — grant, top_up,
-- drawdown, expiry, adjustment — as a signed amount on one bucket (a grant id, or `overdraft`). The entries are
-- made in Redis by the same Lua step that changes the wallet (an outbox list) and copied here by the
-- processor; seq numbers them per customer. A copy retried after a crash writes the same (product, customer,
-- seq) again: ReplacingMergeTree keeps one, and reads use FINAL. Append-only otherwise: nothing updates or
-- deletes an entry.
-- Drawdowns name the calls they were drawn for (event_ids, with what each gave in event_amounts_nano), so the
-- ledger reconciles with mcp_tool_calls call by call.
-- ORDER BY (product, customer, seq): the ledger is read per tenant and customer, in sequence order.
CREATE TABLE IF NOT EXISTS credit_ledger
(
    product LowCardinality(String),
    customer String,
    seq UInt64,
    at DateTime64(3, 'UTC'),
    entry_type LowCardinality(String),
    bucket String,
    amount_nano Int64,
    currency LowCardinality(String),
    period LowCardinality(String),
    event_ids Array(String),
    event_amounts_nano Array(Int64),
    actor String,
    note String
)
ENGINE = ReplacingMergeTree
ORDER BY (product, customer, seq);
