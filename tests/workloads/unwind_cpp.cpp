// C++ without frame pointers (-O2 -fomit-frame-pointer), with exceptions and inlined code:
// main -> cxx_outer -> cxx_work; cxx_work's helpers are inlined into it, and every 64th
// round throws and catches an exception (unwound by libgcc_s through .eh_frame).
// Usage: unwind_cpp [seconds]  (no argument: run forever). Prints "ready" once started.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace cxx {

static inline unsigned long mix(unsigned long x) { return x * 6364136223846793005UL + 1; }

static inline unsigned long round_of(unsigned long x) {
    for (int i = 0; i < 20000; i++)
        x = mix(x) ^ (x >> 7);
    return x;
}

__attribute__((noinline)) void fail(unsigned long x) { throw std::runtime_error(x ? "odd" : "even"); }

}  // namespace cxx

volatile unsigned long cxx_state = 1;
volatile unsigned long cxx_caught;

__attribute__((noinline)) void cxx_work() {
    unsigned long x = cxx_state;
    for (int round = 0; round < 64; round++) {
        x = cxx::round_of(x);
        if (round == 63) {
            try {
                cxx::fail(x & 1);
            } catch (const std::runtime_error &) {
                cxx_caught = cxx_caught + 1;
            }
        }
    }
    cxx_state = x;
}

__attribute__((noinline)) void cxx_outer() {
    cxx_work();
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    using Clock = std::chrono::steady_clock;
    const double seconds = argc > 1 ? std::atof(argv[1]) : 0.0;
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    std::printf("ready\n");
    std::fflush(stdout);
    while (seconds <= 0.0 || Clock::now() < deadline)
        cxx_outer();
    return 0;
}
