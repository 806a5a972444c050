// Tollgate dashboard: the prepaid-credits card. Kept apart from app.js: it reads the same API key from
// sessionStorage and the product and customer filters from the page, and calls GET /billing/credits.
(() => {
  const KEY_STORAGE = 'tollgate.apiKey';
  const $ = (sel) => document.querySelector(sel);

  function td(text, className) {
    const el = document.createElement('td');
    el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  async function refresh() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const card = $('#credits-card');
    if (!key || !card) return;
    const url = new URL('/billing/credits', window.location.origin);
    const product = $('#product')?.value;
    if (product) url.searchParams.set('product', product);
    const customer = $('#customer-filter')?.hidden ? '' : $('#customer')?.value.trim();
    if (customer) url.searchParams.set('customer', customer);
    const tbody = $('#credits-table tbody');
    tbody.replaceChildren();
    let wallets = [];
    try {
      const res = await fetch(url, { headers: { authorization: `Bearer ${key}` } });
      if (!res.ok) return; // the card stays as it was; app.js reports API errors
      wallets = (await res.json()).wallets ?? [];
    } catch {
      return;
    }
    if (wallets.length === 0) {
      const tr = document.createElement('tr');
      const cell = td('no prepaid credits', 'empty');
      cell.colSpan = 5;
      tr.append(cell);
      tbody.append(tr);
    }
    for (const w of wallets) {
      const tr = document.createElement('tr');
      const state = w.state?.reason.startsWith('credits:') ? `${w.state.action} (${w.state.reason})` : '';
      if (w.state?.reason === 'credits:exhausted') tr.className = 'alert';
      tr.append(
        td(w.customer),
        td(`${w.balance} ${w.currency}`, 'num'),
        td(w.pending, 'num'),
        td(w.overdraftUsed, 'num'),
        td(state),
      );
      tbody.append(tr);
    }
    card.hidden = false;
  }

  // app.js shows #main once connected and reloads on #controls submit: follow both.
  new MutationObserver(() => {
    if (!$('#main').hidden) void refresh();
  }).observe($('#main'), { attributes: true, attributeFilter: ['hidden'] });
  $('#controls').addEventListener('submit', () => setTimeout(refresh, 0));
})();
