-- A usage line priced in graduated tiers lands a call's units as one piece per tier they fall in (same line
-- name, each piece at its tier's unit price), so invoices show quantity × unit = amount per tier. The daily
-- view counted array entries as calls; it now counts a call once per line (its first piece), whatever
-- the number of tiers its units straddle. Rows landed before this migration have one piece per line, so
-- what the view already holds is unchanged.
ALTER TABLE mcp_usage_daily_stats_mv MODIFY QUERY
SELECT
    product,
    toDate(started_at) AS day,
    tool,
    u_line AS line,
    customer,
    agent,
    countIf(u_nth = 1) AS calls,
    sum(u_quantity) AS quantity_micro,
    sum(u_price) AS price_nano,
    sum(u_cost) AS cost_nano
FROM mcp_tool_calls
ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_quantity, usage_price_nano AS u_price,
    usage_cost_nano AS u_cost, arrayEnumerateUniq(usage_lines) AS u_nth
GROUP BY product, day, tool, line, customer, agent;
