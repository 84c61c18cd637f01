"""
The admin API, the dashboard and the Prometheus metrics (SPEC sections 9
and 10).

 - L{gatewaykit.admin.metrics}: L{Metrics} (per-request counting, given to
   the L{Gateway}) and the families read from live state at scrape time;
 - L{gatewaykit.admin.state}: L{LocalState}, what the API shows and does,
   and the merging of several workers' answers;
 - L{gatewaykit.admin.server}: the twisted.web site, its authentication and
   L{AdminService}, which listens on C{gateway.admin.bind};
 - C{static/}: the dashboard's HTML, CSS and JavaScript, served as they are.
"""
