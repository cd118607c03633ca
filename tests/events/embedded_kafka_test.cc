#include "events/embedded_kafka.h"

#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "tests/support/kafka_test_consumer.h"

namespace ledger {
namespace {

// Produces `count` plain records with a throwaway producer and waits for their delivery.
void ProduceRaw(const std::string& bootstrap, const std::string& topic, int count) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  ASSERT_EQ(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), errstr,
                              sizeof(errstr)),
            RD_KAFKA_CONF_OK);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  ASSERT_NE(rk, nullptr) << errstr;
  for (int i = 0; i < count; ++i) {
    std::string key = "k" + std::to_string(i);
    std::string value = "v" + std::to_string(i);
    ASSERT_EQ(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()),
                                RD_KAFKA_V_KEY(key.data(), key.size()),
                                RD_KAFKA_V_VALUE(value.data(), value.size()),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
              RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  EXPECT_EQ(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(rk);
}

TEST(EmbeddedKafkaTest, StartsABrokerWithTheTopicAndServesConsumers) {
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open({}, &kafka).ok());
  EXPECT_EQ(kafka->broker_count(), 1);
  EXPECT_NE(kafka->bootstrap_servers().find("127.0.0.1:"), std::string::npos)
      << kafka->bootstrap_servers();

  ProduceRaw(kafka->bootstrap_servers(), "ledger.events", 30);
  std::unique_ptr<testing::KafkaTestConsumer> consumer;
  ASSERT_TRUE(
      testing::KafkaTestConsumer::Open(kafka->bootstrap_servers(), "ledger.events", &consumer)
          .ok());
  ASSERT_TRUE(consumer->ConsumeUntil(
      [](const std::vector<testing::ConsumedRecord>& r) { return r.size() >= 30; },
      std::chrono::seconds(10)));
  std::set<int32_t> partitions;
  for (const auto& record : consumer->records()) partitions.insert(record.partition);
  EXPECT_GT(partitions.size(), 1u) << "the topic should have 3 partitions";
  for (int32_t p : partitions) EXPECT_LT(p, 3);
}

TEST(EmbeddedKafkaTest, SeveralBrokersAndFaultControls) {
  EmbeddedKafkaOptions options;
  options.brokers = 3;
  options.topics = {"a", "b"};
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open(options, &kafka).ok());
  EXPECT_EQ(kafka->broker_count(), 3);
  EXPECT_TRUE(kafka->SetBrokerDown(2).ok());
  EXPECT_TRUE(kafka->SetBrokerUp(2).ok());
  EXPECT_TRUE(kafka->SetBrokerDown(-1).ok());
  EXPECT_TRUE(kafka->SetBrokerUp(-1).ok());
  EXPECT_TRUE(kafka->SetBrokerRtt(1, 5).ok());
  EXPECT_FALSE(kafka->SetBrokerDown(42).ok());
  kafka->PushRequestErrors(EmbeddedKafka::kProduceApiKey, {RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION});
  kafka->ClearRequestErrors(EmbeddedKafka::kProduceApiKey);
  EXPECT_TRUE(kafka->CreateTopic("c", 2).ok());
}

TEST(EmbeddedKafkaTest, RejectsBadOptions) {
  std::unique_ptr<EmbeddedKafka> kafka;
  EmbeddedKafkaOptions options;
  options.brokers = 0;
  EXPECT_FALSE(EmbeddedKafka::Open(options, &kafka).ok());
  options.brokers = 1;
  options.partitions = 0;
  EXPECT_FALSE(EmbeddedKafka::Open(options, &kafka).ok());
}

// The contract's promise: `kcat -C -b <address> -t ledger.events` reads the embedded cluster.
TEST(EmbeddedKafkaTest, KcatReadsTheTopic) {
  if (access("/usr/bin/kcat", X_OK) != 0) GTEST_SKIP() << "kcat is not installed";
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open({}, &kafka).ok());
  ProduceRaw(kafka->bootstrap_servers(), "ledger.events", 25);
  std::string command =
      "timeout 30 kcat -C -b " + kafka->bootstrap_servers() + " -t ledger.events -e 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char line[4096];
  int lines = 0;
  while (fgets(line, sizeof(line), pipe) != nullptr) {
    if (line[0] == 'v') ++lines;
  }
  EXPECT_EQ(pclose(pipe), 0) << command;
  EXPECT_EQ(lines, 25) << command;
}

}  // namespace
}  // namespace ledger
