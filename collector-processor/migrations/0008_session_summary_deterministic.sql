-- A session's agent and transport were kept with anyLast, whose result depends on the order parts merge
-- in: the same session could show one agent, then another after a background merge (two answers to the
-- same question). max() is the same whatever the merge order. Sessions almost always have one agent and
-- one transport; when they have several, the greatest id is shown, documented in docs/api.md.
ALTER TABLE mcp_session_summary
    MODIFY COLUMN agent SimpleAggregateFunction(max, String),
    MODIFY COLUMN transport SimpleAggregateFunction(max, LowCardinality(String));

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
    sum(cost_nano) AS cost_nano
FROM mcp_tool_calls
GROUP BY product, customer, session_id;
