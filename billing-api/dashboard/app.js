// Tollgate dashboard: plain browser JavaScript, no build step. Every number comes from the analytics API,
// called with the API key the user typed (kept in sessionStorage for this tab only, sent as Bearer).
// Money is shown as the API's exact decimal strings; charts plot them as floats (drawing only).
(() => {
  const KEY_STORAGE = 'tollgate.apiKey';
  const $ = (sel) => document.querySelector(sel);
  const charts = {};
  let currency = '';

  const BAND_COLORS = {
    ok: '#2e7d32',
    warn: '#f9a825',
    throttle: '#ef6c00',
    kill: '#c62828',
    not_judged: '#9e9e9e',
    off: '#9e9e9e',
  };
  const SERIES = ['#1565c0', '#6a1b9a', '#00838f', '#ad1457', '#558b2f', '#4e342e', '#283593', '#ef6c00'];

  function status(text, isError = false) {
    const el = $('#status');
    el.textContent = text;
    el.classList.toggle('error', isError);
  }

  async function api(path, params = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') url.searchParams.set(k, v);
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${sessionStorage.getItem(KEY_STORAGE)}` },
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok)
      throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
    return body;
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function fillTable(selector, rows, toCells, empty = 'nothing in this period') {
    const tbody = $(`${selector} tbody`);
    tbody.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      const td = cell(empty, 'empty');
      td.colSpan = $(`${selector} thead tr`).children.length;
      tr.append(td);
      tbody.append(tr);
      return;
    }
    for (const r of rows) {
      const tr = document.createElement('tr');
      for (const c of toCells(r, tr)) tr.append(c instanceof Node ? c : cell(String(c)));
      tbody.append(tr);
    }
  }

  const fmtMoney = (decimal) => `${decimal} ${currency}`;
  const fmtPct = (bps) => (bps === null ? '—' : `${(bps / 100).toFixed(2)} %`);

  function chart(id, config) {
    charts[id]?.destroy();
    charts[id] = new window.Chart($(`#${id}`), {
      ...config,
      options: { animation: false, responsive: true, maintainAspectRatio: false, ...config.options },
    });
  }

  function current() {
    return {
      product: $('#product').value,
      period: $('#period').value,
      customer: $('#customer-filter').hidden ? undefined : $('#customer').value.trim() || undefined,
    };
  }

  async function connect() {
    const me = await api('/me');
    $('#who').textContent = `${me.name} (${me.role}${me.customer ? `: ${me.customer}` : ''})`;
    const select = $('#product');
    select.replaceChildren(
      ...me.products.map((p) => {
        const o = document.createElement('option');
        o.value = p;
        o.textContent = p;
        return o;
      }),
    );
    $('#customer-filter').hidden = me.role === 'customer';
    if (!$('#period').value) $('#period').value = new Date().toISOString().slice(0, 7);
    $('#controls').hidden = false;
    $('#forget').hidden = false;
    await load();
  }

  async function load() {
    const q = current();
    status('Loading…');
    const [summary, byTool, byAgent, byCustomer, kills, sessions] = await Promise.all([
      api('/analytics/mcp/summary', q),
      api('/analytics/mcp/revenue/by-tool', { ...q, limit: 50 }),
      api('/analytics/mcp/by-agent', { ...q, bucket: 'day', limit: 5000 }),
      api('/analytics/mcp/by-customer', { ...q, limit: 100 }),
      api('/analytics/mcp/enforcement-events', { ...q, action: 'kill', limit: 10 }),
      api('/analytics/mcp/sessions', { ...q, limit: 20 }),
    ]);
    currency = summary.currency;
    renderSummary(summary);
    renderTools(byTool.rows);
    renderAgents(byAgent.rows);
    renderMargins(byCustomer);
    fillTable(
      '#kills-table',
      kills.rows,
      (r) => [r.at.replace('T', ' ').replace('Z', ''), r.customer, r.scope, r.subjectId, r.reason],
      'no kills in this period',
    );
    renderSessions(sessions.rows, q);
    $('#session-detail').hidden = true;
    $('#main').hidden = false;
    status(
      `${summary.product} · ${summary.range.from.slice(0, 10)} → ${summary.range.to.slice(0, 10)} (UTC) · ${currency}`,
    );
  }

  function renderSummary(s) {
    const values = {
      revenue: fmtMoney(s.revenue),
      cost: fmtMoney(s.cost),
      margin: `${fmtMoney(s.margin)} (${fmtPct(s.marginBps)})`,
      calls: String(s.calls),
      sessions: String(s.sessions),
      customers: String(s.customers),
      kills: String(s.kills),
      throttles: String(s.throttles),
    };
    for (const [k, v] of Object.entries(values)) $(`[data-kpi="${k}"]`).textContent = v;
  }

  function renderTools(rows) {
    chart('tool-chart', {
      type: 'bar',
      data: {
        labels: rows.map((r) => r.tool),
        datasets: [
          {
            label: `Revenue (${currency})`,
            data: rows.map((r) => Number(r.revenue)),
            backgroundColor: '#1565c0',
          },
          { label: `Cost (${currency})`, data: rows.map((r) => Number(r.cost)), backgroundColor: '#90a4ae' },
          {
            label: `Margin (${currency})`,
            data: rows.map((r) => Number(r.margin)),
            backgroundColor: '#2e7d32',
          },
        ],
      },
    });
    fillTable('#tool-table', rows, (r) => [
      r.tool,
      r.calls,
      r.errors,
      cell(r.revenue, 'num'),
      cell(r.cost, 'num'),
      cell(fmtPct(r.marginBps), 'num'),
      r.durationP95Us === null ? '—' : (r.durationP95Us / 1000).toFixed(1),
    ]);
  }

  function renderAgents(rows) {
    const days = [...new Set(rows.map((r) => r.bucket))].sort();
    const agents = [...new Set(rows.map((r) => r.agent))].sort();
    const value = new Map(rows.map((r) => [`${r.bucket}\u0000${r.agent}`, Number(r.revenue)]));
    chart('agent-chart', {
      type: 'line',
      data: {
        labels: days,
        datasets: agents.map((a, i) => ({
          label: a,
          data: days.map((d) => value.get(`${d}\u0000${a}`) ?? 0),
          borderColor: SERIES[i % SERIES.length],
          backgroundColor: SERIES[i % SERIES.length],
        })),
      },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: currency } } } },
    });
  }

  function renderMargins(res) {
    const rows = res.rows;
    const b = res.bands;
    $('#bands').textContent = b.guardEnabled
      ? `Guard bands of the default plan: warn below ${fmtPct(b.warnBelowBps)}, throttle below ${fmtPct(b.throttleBelowBps)}, kill below ${fmtPct(b.killBelowBps)}.`
      : 'The margin guard is off in the default plan.';
    const labels = rows.map((r) => r.customer);
    const line = (label, bps, color) => ({
      type: 'line',
      label,
      data: labels.map(() => (bps === null ? null : bps / 100)),
      borderColor: color,
      borderDash: [6, 4],
      pointRadius: 0,
      fill: false,
    });
    const datasets = [
      {
        type: 'bar',
        label: 'Margin %',
        data: rows.map((r) => (r.marginBps === null ? null : r.marginBps / 100)),
        backgroundColor: rows.map((r) => BAND_COLORS[r.band] ?? '#9e9e9e'),
      },
    ];
    if (b.guardEnabled) {
      datasets.push(line('warn', b.warnBelowBps, BAND_COLORS.warn));
      datasets.push(line('throttle', b.throttleBelowBps, BAND_COLORS.throttle));
      datasets.push(line('kill', b.killBelowBps, BAND_COLORS.kill));
    }
    chart('margin-chart', {
      type: 'bar',
      data: { labels, datasets },
      options: { scales: { y: { title: { display: true, text: '%' } } } },
    });
    fillTable('#margin-table', rows, (r) => {
      const band = cell(r.band, `band band-${r.band}`);
      return [
        r.customer,
        cell(r.revenue, 'num'),
        cell(r.cost, 'num'),
        cell(fmtPct(r.marginBps), 'num'),
        band,
      ];
    });
  }

  function renderSessions(rows, q) {
    fillTable(
      '#sessions-table',
      rows,
      (r, tr) => {
        tr.className = 'clickable';
        tr.tabIndex = 0;
        tr.dataset.session = r.sessionId;
        const open = () =>
          showSession(r.sessionId, { product: q.product, customer: q.customer ?? undefined }, r.customer);
        tr.addEventListener('click', open);
        tr.addEventListener('keydown', (e) => {
          if (e.key === 'Enter') open();
        });
        return [
          r.sessionId,
          r.customer,
          r.agent,
          r.lastSeen.replace('T', ' ').replace('Z', ''),
          r.calls,
          cell(r.revenue, 'num'),
          cell(fmtPct(r.marginBps), 'num'),
        ];
      },
      'no sessions in this period',
    );
  }

  async function showSession(id, q, customer) {
    try {
      const s = await api(`/analytics/mcp/sessions/${encodeURIComponent(id)}`, {
        ...q,
        customer: q.customer ?? customer,
        limit: 500,
      });
      $('#session-id').textContent =
        `${id} — ${s.totals.calls} calls, ${fmtMoney(s.totals.revenue)}, margin ${fmtPct(s.totals.marginBps)}`;
      fillTable('#calls-table', s.calls, (c) => {
        const trace = document.createElement('td');
        if (/^https?:\/\//i.test(c.traceLink)) {
          const a = document.createElement('a');
          a.href = c.traceLink;
          a.target = '_blank';
          a.rel = 'noopener noreferrer';
          a.textContent = `${c.traceId.slice(0, 8)}…`;
          a.title = c.traceId;
          trace.append(a);
        } else trace.textContent = c.traceId;
        return [
          c.seq,
          c.startedAt.replace('T', ' ').replace('Z', ''),
          c.tool,
          c.decision,
          c.tier,
          `${c.inputTokens}/${c.outputTokens}`,
          (c.durationUs / 1000).toFixed(1),
          cell(c.price, 'num'),
          cell(c.cost, 'num'),
          trace,
        ];
      });
      $('#session-detail').hidden = false;
    } catch (err) {
      status(err.message, true);
    }
  }

  $('#auth').addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = $('#key').value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $('#key').value = '';
    try {
      await connect();
    } catch (err) {
      status(err.message, true);
    }
  });
  $('#forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORAGE);
    window.location.reload();
  });
  $('#controls').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await load();
    } catch (err) {
      status(err.message, true);
    }
  });

  if (sessionStorage.getItem(KEY_STORAGE)) connect().catch((err) => status(err.message, true));
  else status('Enter an API key to load the dashboard.');
})();
