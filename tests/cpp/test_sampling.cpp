// Unit tests of csrc/sampling.h: plain C++, no Torch, so they build and run in seconds.
#include "sampling.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

using namespace gfkernels;

static int failures = 0;

static void check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

static bool near(double a, double b, double tol = 1e-12) { return std::fabs(a - b) <= tol; }

static void test_source_position() {
  // Whole-axis box reproduces F.interpolate's maps.
  for (int64_t j = 0; j < 7; ++j) {
    check(near(source_position(0, 20, j, 7, false), (j + 0.5) * 20.0 / 7 - 0.5),
          "align_corners=false whole axis");
    check(near(source_position(0, 20, j, 7, true), j * 19.0 / 6), "align_corners=true whole axis");
  }
  check(near(source_position(3, 9, 0, 1, true), 3 + 2.5), "align_corners=true, out == 1");
  // An integer box of the output's size samples integer positions under both settings.
  for (int64_t j = 0; j < 5; ++j) {
    check(near(source_position(4, 9, j, 5, false), 4 + j), "integer box, align_corners=false");
    check(near(source_position(4, 9, j, 5, true), 4 + j), "integer box, align_corners=true");
  }
}

static void test_position_derivatives() {
  const double eps = 1e-6;
  for (bool ac : {false, true}) {
    for (int64_t out : {1, 4, 9}) {
      for (int64_t j = 0; j < out; ++j) {
        const double lo = 2.3, hi = 11.7;
        const double dhi = (source_position(lo, hi + eps, j, out, ac) -
                            source_position(lo, hi - eps, j, out, ac)) / (2 * eps);
        const double dlo = (source_position(lo + eps, hi, j, out, ac) -
                            source_position(lo - eps, hi, j, out, ac)) / (2 * eps);
        check(near(dhi, source_position_dhi(j, out, ac), 1e-8), "d position / d hi");
        check(near(dlo, 1.0 - source_position_dhi(j, out, ac), 1e-8), "d position / d lo");
      }
    }
  }
}

static void test_cubic() {
  double w[4], dw[4];
  for (double t : {0.0, 0.1, 0.25, 0.5, 0.77, 0.999}) {
    cubic_weights(t, w);
    check(near(w[0] + w[1] + w[2] + w[3], 1.0), "cubic weights sum to one");
    // The kernel is symmetric: the weights at 1 - t are those at t, reversed.
    double mirrored[4];
    cubic_weights(1.0 - t, mirrored);
    for (int k = 0; k < 4; ++k) check(near(w[k], mirrored[3 - k]), "cubic weights are symmetric");
    cubic_weight_derivatives(t, dw);
    check(near(dw[0] + dw[1] + dw[2] + dw[3], 0.0), "cubic derivatives sum to zero");
    const double eps = 1e-6;
    double wp[4], wm[4];
    cubic_weights(t + eps, wp);
    cubic_weights(t - eps, wm);
    for (int k = 0; k < 4; ++k)
      check(near((wp[k] - wm[k]) / (2 * eps), dw[k], 1e-7), "cubic derivative vs finite difference");
  }
  cubic_weights(0.0, w);
  check(w[0] == 0.0 && w[1] == 1.0 && w[2] == 0.0 && w[3] == 0.0, "cubic at t = 0 is exact");
}

static void test_taps() {
  Taps t;
  make_taps(2.25, 10, Mode::Bilinear, Padding::Border, t);
  check(t.index[0] == 2 && t.index[1] == 3 && near(t.weight[0], 0.75) && near(t.weight[1], 0.25),
        "bilinear taps");
  make_taps(-0.5, 10, Mode::Bilinear, Padding::Border, t);
  check(t.index[0] == 0 && t.index[1] == 0, "border clamps taps");
  make_taps(-0.5, 10, Mode::Bilinear, Padding::Zeros, t);
  check(t.weight[0] == 0.0 && near(t.weight[1], 0.5) && t.index[0] == 0, "zeros: outside weight 0");
  make_taps(2.5, 10, Mode::Nearest, Padding::Border, t);
  check(t.index[0] == 3, "nearest rounds half up (floor(x + 0.5))");
  make_taps(1.2, 10, Mode::Bicubic, Padding::Border, t);
  check(t.index[0] == 0 && t.index[3] == 3, "bicubic reads floor(x)-1 .. floor(x)+2");
  for (double x : {1e300, -1e300, static_cast<double>(NAN), 1e18, -7.5, 13.2}) {
    for (Mode m : {Mode::Nearest, Mode::Bilinear, Mode::Bicubic}) {
      for (Padding p : {Padding::Border, Padding::Zeros}) {
        make_taps(x, 10, m, p, t);
        for (int k = 0; k < taps_of(m); ++k) {
          check(t.index[k] >= 0 && t.index[k] < 10, "taps stay inside the image");
          check(std::isfinite(t.weight[k]), "weights are finite");
          if (p == Padding::Zeros && !std::isnan(x)) check(t.weight[k] == 0.0, "far outside reads zero");
        }
      }
    }
  }
}

static void test_exact_copy() {
  check(is_exact_copy(3, 8, 5, 10), "integer box of the output's size is a copy");
  check(!is_exact_copy(3.5, 8.5, 5, 10), "fractional box is not");
  check(!is_exact_copy(3, 9, 5, 10), "box of another size is not");
  check(!is_exact_copy(-1, 4, 5, 10), "box leaving the image is not");
  check(!is_exact_copy(6, 11, 5, 10), "box leaving the image is not");
}

int main() {
  test_source_position();
  test_position_derivatives();
  test_cubic();
  test_taps();
  test_exact_copy();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all sampling.h checks passed\n");
  return 0;
}
