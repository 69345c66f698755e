// On-CPU workload: main -> ns::Worker::spin() (the hot leaf).
// Usage: hot_cpp [seconds]  (no argument: run forever). Prints "ready" once started.
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace ns {

class Worker {
  public:
    void spin();

  private:
    unsigned long state_ = 1;
};

// The accumulator is a volatile stack local: the loop cannot be folded away, and the
// stack use makes g++ emit the frame-pointer prologue even in this leaf function.
__attribute__((noinline)) void Worker::spin() {
    volatile unsigned long x = state_;
    for (int i = 0; i < 1000000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    state_ = x;
}

}  // namespace ns

int main(int argc, char **argv) {
    using Clock = std::chrono::steady_clock;
    const double seconds = argc > 1 ? std::atof(argv[1]) : 0.0;
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    std::printf("ready\n");
    std::fflush(stdout);
    ns::Worker worker;
    while (seconds <= 0.0 || Clock::now() < deadline)
        worker.spin();
    return 0;
}
