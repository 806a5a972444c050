-- The billing session rule (contracts/src/billing-session.ts): which of protocol session, stdio connection,
-- caller's trace or caller's activity gave session_id. Sessions of the stateless 2026-07-28 protocol come from
-- the last two; finance and SREs read which one a session is, because they mean different things (one agent
-- run vs. one burst of activity). Added at the end of the row (landing writes named columns); '' for rows landed
-- before this migration and for calls without a session.
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS session_rule LowCardinality(String) DEFAULT '';

-- A session has one rule (its id's shape decides it); max() is merge-order independent like agent/transport.
ALTER TABLE mcp_session_summary ADD COLUMN IF NOT EXISTS session_rule SimpleAggregateFunction(max, LowCardinality(String)) DEFAULT '';

ALTER TABLE mcp_session_summary_mv MODIFY QUERY
SELECT
    product,
    customer,
    session_id,
    max(agent) AS agent,
    max(transport) AS transport,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count() AS calls,
    countIf(status = 'error') AS errors,
    sum(price_nano) AS revenue_nano,
    sum(cost_nano) AS cost_nano,
    max(session_rule) AS session_rule
FROM mcp_tool_calls
GROUP BY product, customer, session_id;
