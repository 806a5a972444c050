// Tollgate dashboard: plain browser JavaScript, no build step. Every number comes from the analytics API,
// called with the API key the user typed (kept in sessionStorage for this tab only, sent as Bearer).
// Money is shown in the currency's usual decimals (rounded half away from zero, on the decimal text: never
// through a float), with the API's exact amount on hover (title) and in every CSV download (the API's own
// CSV, exact). Charts plot amounts as floats (drawing only).
(() => {
  const KEY_STORAGE = 'tollgate.apiKey';
  const $ = (sel) => document.querySelector(sel);
  const charts = {};
  let currency = '';
  /** Whether the key reads the vendor's side (cost, margin, guard): admin and finance keys, not customer keys. */
  let vendorView = true;

  /** Band names in words, and why a customer is where it is (from its own plan's guard, on its row). */
  const BAND_WORDS = {
    ok: 'Healthy',
    warn: 'Warning',
    throttle: 'Throttle',
    kill: 'Kill',
    not_judged: 'Not judged',
    off: 'Guard off',
  };

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
    // a column whose header is vendor-only (cost, margin) is hidden with it for a customer key
    const vendorCols = [...$(`${selector} thead tr`).children].map((th) => th.hasAttribute('data-vendor'));
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
      toCells(r, tr).forEach((c, i) => {
        const td = c instanceof Node ? c : cell(String(c));
        if (vendorCols[i]) td.setAttribute('data-vendor', '');
        tr.append(td);
      });
      tbody.append(tr);
    }
  }

  /** Fraction digits a currency is usually written with (USD 2, JPY 0, KWD 3). */
  function currencyDigits(code) {
    try {
      return new Intl.NumberFormat('en', { style: 'currency', currency: code }).resolvedOptions()
        .maximumFractionDigits;
    } catch {
      return 2;
    }
  }

  /** An exact decimal string rounded to `digits` places, half away from zero, on the text itself. */
  function roundDecimal(text, digits) {
    const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
    if (!m) return text;
    const [, sign, whole, frac = ''] = m;
    let units = BigInt(whole + frac.padEnd(digits, '0').slice(0, digits));
    if ((frac[digits] ?? '0') >= '5') units += 1n;
    const abs = units.toString().padStart(digits + 1, '0');
    const body = digits ? `${abs.slice(0, -digits)}.${abs.slice(-digits)}` : abs;
    return units === 0n ? body : `${sign}${body}`;
  }

  function formatCurrency(decimal, minDigits, maxDigits) {
    try {
      return new Intl.NumberFormat(navigator.language, {
        style: 'currency',
        currency,
        minimumFractionDigits: minDigits,
        maximumFractionDigits: maxDigits,
      }).format(decimal); // a decimal string is formatted exactly (Intl.NumberFormat v3)
    } catch {
      return `${decimal} ${currency}`;
    }
  }

  /**
   * `$1,234.57`: an amount in the currency's usual decimals, formatted by the browser's locale. An amount that
   * is not zero but rounds to zero reads `< $0.01` (or `> -$0.01`), never a misleading `$0.00`.
   */
  function moneyText(decimal) {
    if (decimal === undefined || decimal === null) return '—'; // not in a customer key's answers
    const digits = currencyDigits(currency);
    const rounded = roundDecimal(decimal, digits);
    if (/^-?0(\.0*)?$/.test(rounded) && /[1-9]/.test(decimal)) {
      const unit = formatCurrency(digits ? `0.${'1'.padStart(digits, '0')}` : '1', digits, digits);
      return decimal.startsWith('-') ? `> -${unit}` : `< ${unit}`;
    }
    return formatCurrency(rounded, digits, digits);
  }

  /** A price (one call's, like a rate card): every decimal it has, at least the usual ones. */
  function priceText(decimal) {
    return formatCurrency(decimal, currencyDigits(currency), 9);
  }

  /** A money cell: rounded for reading (or a per-call price, exact), the exact amount on hover. */
  function moneyCell(decimal, format = moneyText) {
    const td = cell(format(decimal), 'num money');
    td.title = `${decimal} ${currency} (exact)`;
    return td;
  }

  const fmtMoney = moneyText;
  const fmtPct = (bps) => (bps === null || bps === undefined ? '—' : `${(bps / 100).toFixed(2)} %`);

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
    // a customer key's answers carry no cost, margin or margin-guard thresholds: their cards and columns go
    vendorView = me.role !== 'customer';
    document.body.classList.toggle('customer-view', !vendorView);
    if (!$('#period').value) $('#period').value = new Date().toISOString().slice(0, 7);
    $('#controls').hidden = false;
    $('#forget').hidden = false;
    await load();
  }

  /** Where each card's CSV comes from: the API's own CSV of the same query (exact amounts). */
  const csvSources = {};

  /** Downloads the API's CSV for a card (fetched with the key: a plain link would carry no Authorization). */
  async function downloadCsv(name) {
    const src = csvSources[name];
    if (!src) return;
    const url = new URL(src.path, window.location.origin);
    for (const [k, v] of Object.entries({ ...src.params, format: 'csv' }))
      if (v !== undefined && v !== '') url.searchParams.set(k, v);
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${sessionStorage.getItem(KEY_STORAGE)}` },
    });
    if (!res.ok) throw new Error(`CSV: HTTP ${res.status}`);
    const a = document.createElement('a');
    a.href = URL.createObjectURL(await res.blob());
    a.download = `${name}-${src.params.product}-${src.params.period ?? 'session'}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }

  async function load() {
    const q = current();
    status('Loading…');
    const toolQ = { ...q, limit: 50 };
    const customerQ = { ...q, limit: 100 };
    const killQ = { ...q, action: 'kill', limit: 10 };
    const sessionQ = { ...q, limit: 20 };
    const [summary, byTool, byDay, byCustomer, kills, sessions] = await Promise.all([
      api('/analytics/mcp/summary', q),
      api('/analytics/mcp/revenue/by-tool', toolQ),
      api('/analytics/mcp/by-agent', { ...q, bucket: 'day', limit: 5000 }),
      api('/analytics/mcp/by-customer', customerQ),
      api('/analytics/mcp/enforcement-events', killQ),
      api('/analytics/mcp/sessions', sessionQ),
    ]);
    currency = summary.currency;
    // Calls on one or two days only: a daily chart would be one or two isolated points, so ask for hours.
    const days = [...new Set(byDay.rows.map((r) => r.bucket.slice(0, 10)))].sort();
    let agentQ = { ...q, bucket: 'day', limit: 5000 };
    let byAgent = byDay;
    if (days.length > 0 && days.length <= 2) {
      const last = new Date(`${days[days.length - 1]}T00:00:00Z`);
      last.setUTCDate(last.getUTCDate() + 1);
      agentQ = {
        product: q.product,
        customer: q.customer,
        from: `${days[0]}`,
        to: last.toISOString().slice(0, 10),
        bucket: 'hour',
        limit: 5000,
      };
      byAgent = await api('/analytics/mcp/by-agent', agentQ);
    }
    Object.assign(csvSources, {
      tools: { path: '/analytics/mcp/revenue/by-tool', params: toolQ },
      agents: { path: '/analytics/mcp/by-agent', params: agentQ },
      margins: { path: '/analytics/mcp/by-customer', params: customerQ },
      kills: { path: '/analytics/mcp/enforcement-events', params: killQ },
      sessions: { path: '/analytics/mcp/sessions', params: sessionQ },
    });
    renderSummary(summary);
    renderTools(byTool.rows);
    renderAgents(byAgent.rows, agentQ.bucket);
    renderMargins(byCustomer);
    renderKills(kills.rows, q);
    renderSessions(sessions.rows, q);
    $('#session-detail').hidden = true;
    $('#main').hidden = false;
    const wanted = sessionFromHash();
    if (wanted) await showSession(wanted.id, { product: q.product, customer: q.customer }, wanted.customer);
    status(
      `${summary.product} · ${summary.range.from.slice(0, 10)} → ${summary.range.to.slice(0, 10)} (UTC) · ${currency}`,
    );
  }

  function renderSummary(s) {
    for (const k of vendorView ? ['revenue', 'cost', 'margin'] : ['revenue'])
      $(`[data-kpi="${k}"]`).title = `${s[k]} ${currency} (exact)`;
    const values = {
      revenue: fmtMoney(s.revenue),
      cost: fmtMoney(s.cost),
      margin: vendorView ? `${fmtMoney(s.margin)} (${fmtPct(s.marginBps)})` : '—',
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
        ].slice(0, vendorView ? 3 : 1),
      },
    });
    fillTable('#tool-table', rows, (r) => [
      r.tool,
      r.calls,
      r.errors,
      moneyCell(r.revenue),
      moneyCell(r.cost),
      cell(fmtPct(r.marginBps), 'num'),
      r.durationP95Us === null ? '—' : (r.durationP95Us / 1000).toFixed(1),
      usageCell(r.usageLines),
    ]);
  }

  /**
   * The tool's usage lines (docs/rate-plans.md#usage-lines), one per row: the line's name in words, its
   * quantity (exact, grouped the locale's way) and its revenue in the currency's usual decimals; the exact
   * quantities and amounts on hover.
   */
  function usageCell(lines) {
    if (!lines || lines.length === 0) return '—';
    const td = cell('', 'usage');
    for (const l of lines) {
      const div = document.createElement('div');
      div.dataset.line = l.line;
      const amount = document.createElement('span');
      amount.textContent = `${quantityText(l.quantity)} → ${moneyText(l.revenue)}`;
      div.append(`${l.line.replace(/_/g, ' ')}: `, amount);
      td.append(div);
    }
    td.title = lines
      .map((l) => `${l.line}: ${l.quantity} units, ${l.revenue} ${currency} (exact)`)
      .join('\n');
    return td;
  }

  /** A quantity (a decimal string, exact): grouped by the locale, every decimal kept. */
  function quantityText(decimal) {
    try {
      return new Intl.NumberFormat(navigator.language, { maximumFractionDigits: 20 }).format(decimal);
    } catch {
      return decimal;
    }
  }

  /** Every bucket from the first to the last (empty ones at 0), so the bars keep the time axis honest. */
  function bucketsBetween(first, last, bucket) {
    const step = bucket === 'hour' ? 3_600_000 : 86_400_000;
    const out = [];
    for (let t = Date.parse(first); t <= Date.parse(last); t += step) out.push(t);
    return out;
  }

  /** Stacked bars per bucket and agent: a day or two of calls is still a readable chart (hours). */
  function renderAgents(rows, bucket) {
    $('#agent-title').textContent =
      bucket === 'hour'
        ? 'Hourly revenue by agent (UTC; calls on one or two days)'
        : 'Daily revenue by agent';
    const times = rows.map((r) => r.bucket).sort();
    const buckets = times.length ? bucketsBetween(times[0], times[times.length - 1], bucket) : [];
    const agents = [...new Set(rows.map((r) => r.agent))].sort();
    const value = new Map(rows.map((r) => [`${Date.parse(r.bucket)}\u0000${r.agent}`, Number(r.revenue)]));
    const label = (t) => {
      const iso = new Date(t).toISOString();
      return bucket === 'hour' ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(0, 10);
    };
    chart('agent-chart', {
      type: 'bar',
      data: {
        labels: buckets.map(label),
        datasets: agents.map((a, i) => ({
          label: a,
          data: buckets.map((t) => value.get(`${t}\u0000${a}`) ?? 0),
          backgroundColor: SERIES[i % SERIES.length],
          stack: 'revenue',
        })),
      },
      options: {
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: currency } },
        },
      },
    });
  }

  /** Why a customer is in its band, in words, from the guard of its own plan (on its row). */
  function bandWhy(r) {
    switch (r.band) {
      case 'off':
        return `its plan${r.planId ? ` (${r.planId})` : ''} has no margin guard`;
      case 'not_judged':
        return r.marginBps === null
          ? 'no revenue yet (free or failed calls only)'
          : `revenue under the guard's ${fmtMoney(r.minRevenue)} minimum`;
      case 'kill':
        return `margin below ${fmtPct(r.killBelowBps)}`;
      case 'throttle':
        return `margin below ${fmtPct(r.throttleBelowBps)}`;
      case 'warn':
        return `margin below ${fmtPct(r.warnBelowBps)}`;
      default:
        return `margin at or above ${fmtPct(r.warnBelowBps)}`;
    }
  }

  function renderMargins(res) {
    if (!vendorView) return;
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
      const band = cell(BAND_WORDS[r.band] ?? r.band, `band band-${r.band}`);
      band.title = r.band;
      return [
        r.customer,
        moneyCell(r.revenue),
        moneyCell(r.cost),
        cell(fmtPct(r.marginBps), 'num'),
        band,
        cell(bandWhy(r), 'why'),
      ];
    });
  }

  /** `#session=<id>&customer=<c>`: the drill-down of a session, linkable. */
  function sessionHash(id, customer) {
    const h = new URLSearchParams({ session: id });
    if (customer) h.set('customer', customer);
    return `#${h}`;
  }

  function sessionFromHash() {
    const h = new URLSearchParams(window.location.hash.slice(1));
    const id = h.get('session');
    return id ? { id, customer: h.get('customer') ?? undefined } : undefined;
  }

  function sessionLink(id, customer) {
    const a = document.createElement('a');
    a.href = sessionHash(id, customer);
    a.className = 'session-link';
    a.textContent = id;
    a.title = 'open the session: its calls, prices and trace links';
    return a;
  }

  function renderKills(rows) {
    fillTable(
      '#kills-table',
      rows,
      (r) => {
        const subject = document.createElement('td');
        if (r.scope === 'session' && r.subjectId) subject.append(sessionLink(r.subjectId, r.customer));
        else subject.textContent = r.subjectId;
        return [
          r.at.replace('T', ' ').replace('Z', ''),
          r.customer,
          r.scope,
          subject,
          cell(r.reason, 'reason'),
        ];
      },
      'no kills in this period',
    );
  }

  function renderSessions(rows, q) {
    fillTable(
      '#sessions-table',
      rows,
      (r, tr) => {
        tr.className = 'clickable';
        tr.tabIndex = 0;
        tr.dataset.session = r.sessionId;
        // The drill-down is addressed by the URL hash (a link can be shared); the row opens it too.
        const open = () => {
          const h = sessionHash(r.sessionId, r.customer);
          if (window.location.hash === h)
            showSession(r.sessionId, { product: q.product, customer: q.customer }, r.customer);
          else window.location.hash = h;
        };
        tr.addEventListener('click', (e) => {
          if (!e.target.closest('a')) open();
        });
        tr.addEventListener('keydown', (e) => {
          if (e.key === 'Enter' && !e.target.closest('a')) open();
        });
        const id = document.createElement('td');
        id.append(sessionLink(r.sessionId, r.customer));
        return [
          id,
          r.customer,
          r.agent,
          r.lastSeen.replace('T', ' ').replace('Z', ''),
          r.calls,
          moneyCell(r.revenue),
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
      csvSources.calls = {
        path: `/analytics/mcp/sessions/${encodeURIComponent(id)}`,
        params: { ...q, customer: q.customer ?? customer, limit: 500 },
      };
      $('#session-id').textContent = id;
      $('#session-totals').textContent =
        ` — ${s.totals.calls} calls, ${fmtMoney(s.totals.revenue)}, margin ${fmtPct(s.totals.marginBps)}`;
      $('#session-totals').title = `${s.totals.revenue} ${currency} (exact)`;
      // The session's trace link: the trace of its first call (each call's own is in the table).
      const first = s.calls.find((c) => /^https?:\/\//i.test(c.traceLink));
      const slot = $('#session-trace');
      slot.replaceChildren();
      if (first) {
        const a = document.createElement('a');
        a.href = first.traceLink;
        a.target = '_blank';
        a.rel = 'noopener noreferrer';
        a.textContent = 'trace ↗';
        a.title = `trace ${first.traceId} (the session's first call)`;
        slot.append(a);
      }
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
          moneyCell(c.price, priceText),
          moneyCell(c.cost, priceText),
          trace,
        ];
      });
      $('#session-detail').hidden = false;
      $('#session-detail').scrollIntoView({ block: 'nearest' });
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
  for (const b of document.querySelectorAll('button.csv')) {
    b.addEventListener('click', () => downloadCsv(b.dataset.csv).catch((err) => status(err.message, true)));
  }
  window.addEventListener('hashchange', () => {
    const wanted = sessionFromHash();
    if (!wanted || $('#main').hidden) return;
    const q = current();
    showSession(wanted.id, { product: q.product, customer: q.customer }, wanted.customer);
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
