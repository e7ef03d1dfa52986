# The worst diagnostic over all sampled parameters keeps an undefined one (NA) instead of
# dropping it: the checks must see it and fail the fit.
test_that("worst() is NA when any sampled parameter's diagnostic is undefined", {
  env <- load_service_env()
  expect_equal(env$worst(c(1.001, 1.02, 1.003), max), 1.02)
  expect_equal(env$worst(c(900, 450, 1200), min), 450)
  expect_true(is.na(env$worst(c(1.001, NA, 1.003), max)))
  expect_true(is.na(env$worst(c(900, NaN), min)))
  expect_true(is.na(env$worst(c(900, Inf), min)))
  expect_true(is.na(env$worst(numeric(0), max)))
  # and it travels as JSON null, which the Python side reads as NaN and the checks fail
  expect_equal(as.character(env$to_json(list(max_rhat = env$num1(env$worst(c(1, NA), max))))),
               '{"max_rhat":null}')
})
