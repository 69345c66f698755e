/* A stand-in service for `make demo`: each "request" parses, hashes and
 * checksums a payload and writes a response (a real syscall, so kernel frames
 * show up too). Built with frame pointers so every caller is named. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static volatile uint64_t sink;

/* Each stage reports a metric; like most real code, that makes the stages
 * non-leaf functions, so GCC keeps their frame pointer set-up. */
NOINLINE static void record_metric(uint64_t value)
{
    sink += value;
}

NOINLINE static uint64_t parse_request(const char *buf, size_t len)
{
    uint64_t fields = 0;
    for (int round = 0; round < 40; round++)
        for (size_t i = 0; i < len; i++)
            fields += buf[i] == ',' ? 1 : (uint64_t)buf[i] >> 5;
    record_metric(fields);
    return fields;
}

NOINLINE static uint64_t hash_payload(const char *buf, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (int round = 0; round < 120; round++)
        for (size_t i = 0; i < len; i++)
            h = (h ^ (uint8_t)buf[i]) * 1099511628211ULL;
    record_metric(h);
    return h;
}

NOINLINE static uint32_t checksum(const char *buf, size_t len)
{
    uint32_t a = 1, b = 0;
    for (int round = 0; round < 60; round++)
        for (size_t i = 0; i < len; i++) {
            a = (a + (uint8_t)buf[i]) % 65521;
            b = (b + a) % 65521;
        }
    record_metric(a);
    return b << 16 | a;
}

NOINLINE static void send_response(int fd, const char *buf, size_t len)
{
    for (int i = 0; i < 64; i++)
        if (write(fd, buf, len) < 0)
            return;
}

NOINLINE static void handle_request(int out, char *buf, size_t len)
{
    sink += parse_request(buf, len);
    sink += hash_payload(buf, len);
    sink += checksum(buf, len);
    send_response(out, buf, len);
}

int main(void)
{
    char buf[4096];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = "id=42,name=rover,kind=demo,"[i % 27];
    int out = open("/dev/null", O_WRONLY);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        handle_request(out, buf, sizeof buf);
}
