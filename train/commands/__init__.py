"""The commands besides `skein train`: bench, submit, status, export/import, generate, params,
plot-lr, and the plots they draw."""
